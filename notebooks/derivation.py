# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The derivation, checked numerically
#
# sdessm implements the EM derivation for SDE-based state-space models written out in
# `docs/derivation.md` (the page *The EM derivation* of this site). This notebook checks each
# of its steps against an independent computation:
#
# - **(a) Exact discretisation.** Over a step $s$ the SDE $dx = F x\,dt + L\,dW$ has
#   transitions $N(A x, \Sigma)$ with $A = e^{Fs}$ and
#   $\Sigma = \int_0^s e^{Fr} Q e^{F^\top r}\,dr$, $Q = L L^\top$, read off the block
#   exponential $\exp\left(\begin{bmatrix} F & Q \\ 0 & -F^\top \end{bmatrix} s\right)
#   = \begin{bmatrix} A & \Sigma A^{-\top} \\ 0 & A^{-\top} \end{bmatrix}$.
#   We compare `sdessm.discretize` with SciPy's `expm` and numerical quadrature, and with the
#   closed form of the scalar Ornstein-Uhlenbeck process.
# - **(b) Back from discrete to continuous time.** The M-step fits $(A, \Sigma)$; the SDE is
#   recovered from the matrix logarithm of the same block matrix
#   (`sdessm.sde_from_discrete`). We check the round trip, and what happens where no real
#   logarithm exists.
# - **(c) EM.** The M-step formulas, recomputed by hand from smoother moments, equal one
#   `fit_em` iteration; the log-likelihood never decreases; the last history entry is the
#   log-likelihood of the returned parameters.
# - **(d) The E-step.** The Kalman filter, the RTS smoother, the lag-one cross-covariances, the
#   log-likelihood and the expected sufficient statistics equal brute-force Gaussian
#   conditioning of all states and observations at once, with missing values and irregular
#   times.
#
# Every check prints its largest error and asserts a tolerance, so a wrong result stops the
# notebook.

# %%
# %matplotlib inline
import warnings

import jax
import numpy as np
import scipy.integrate
import scipy.linalg
import scipy.stats
from matplotlib.figure import Figure

import sdessm

jax.config.update("jax_enable_x64", True)  # a notebook is an entry point: compute in float64
np.set_printoptions(precision=4, suppress=True)


def rel_err(got, ref):
    """Largest entry of |got - ref|, relative to the largest entry of |ref|."""
    got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))


# %% [markdown]
# ## (a) Exact discretisation
#
# The reference below shares nothing with sdessm: $A$ from `scipy.linalg.expm` and $\Sigma$ by
# adaptive quadrature of the matrix-valued integrand (`scipy.integrate.quad_vec`). We also
# evaluate the derivation's block formula itself with SciPy: $\Sigma$ is the top-right block
# times $A^\top$.


# %%
def reference_discretize(F, Q, s):
    """(A, Sigma) by expm and quadrature of int_0^s e^{Fr} Q e^{F^T r} dr."""
    F, Q = np.asarray(F, dtype=float), np.asarray(Q, dtype=float)

    def integrand(r):
        E = scipy.linalg.expm(F * r)
        return E @ Q @ E.T

    Sigma, _ = scipy.integrate.quad_vec(integrand, 0.0, s, epsabs=1e-15, epsrel=1e-13)
    return scipy.linalg.expm(F * s), 0.5 * (Sigma + Sigma.T)


def block_discretize(F, Q, s):
    """The derivation's formula: one expm of [[F, Q], [0, -F^T]] s."""
    F, Q = np.asarray(F, dtype=float), np.asarray(Q, dtype=float)
    d = F.shape[0]
    E = scipy.linalg.expm(np.block([[F, Q], [np.zeros((d, d)), -F.T]]) * s)
    A = E[:d, :d]
    return A, E[:d, d:] @ A.T


rng = np.random.default_rng(0)
M = rng.normal(size=(3, 3))
V = rng.normal(size=(3, 3))
systems = {
    "scalar OU": (np.array([[-0.5]]), np.array([[0.8]])),
    "random walk (F = 0)": (np.zeros((2, 2)), np.array([[1.0, 0.0], [0.5, 0.3]])),
    "damped oscillator": (np.array([[0.0, 1.0], [-4.0, -0.4]]), np.array([[0.0], [0.6]])),
    "random 3-D, stable": (M - 3.0 * np.eye(3), rng.normal(size=(3, 2))),
    "stiff, |lambda| s up to 50": (
        V @ np.diag([-0.5, -5.0, -50.0]) @ np.linalg.inv(V),
        np.eye(3),
    ),
}
rows = []
for name, (F, L) in systems.items():
    Q = L @ L.T
    for s in (0.1, 1.0):
        A, Sigma = sdessm.discretize(F, L, s)
        A_ref, Sigma_ref = reference_discretize(F, Q, s)
        A_blk, Sigma_blk = block_discretize(F, Q, s)
        rows.append(
            (name, s, rel_err(A, A_ref), rel_err(Sigma, Sigma_ref), rel_err(Sigma_blk, Sigma_ref))
        )
print(f"{'system':<28}{'s':>5}  {'A vs expm':>10}  {'Sigma vs quad':>13}  {'block vs quad':>13}")
for name, s, eA, eS, eB in rows:
    print(f"{name:<28}{s:>5}  {eA:10.2e}  {eS:13.2e}  {eB:13.2e}")
max_a = max(r[2] for r in rows)
max_sigma = max(r[3] for r in rows)
print(f"max relative error: A {max_a:.2e}, Sigma {max_sigma:.2e}")
assert max_a < 1e-12 and max_sigma < 1e-10

# %% [markdown]
# `sdessm.discretize` agrees with the references to round-off in every case. The last column
# is the derivation's block formula evaluated naively by one `expm`: fine for mild steps, but
# for the stiff step ($|\lambda| s = 50$) it mixes $e^{\lambda s}$ with $e^{-\lambda s}$ in one
# exponential and loses every digit of $\Sigma$. sdessm evaluates the block on a reduced step
# $h = s / 2^k$ and doubles exactly ($A_{2h} = A_h^2$,
# $\Sigma_{2h} = A_h \Sigma_h A_h^\top + \Sigma_h$), which keeps its accuracy for any step
# (see `docs/conventions.md`).

# %%
naive_stiff = [r[4] for r in rows if r[0].startswith("stiff") and r[1] == 1.0][0]
print(f"naive block expm, stiff step: relative error of Sigma {naive_stiff:.1e}")
assert naive_stiff > 1.0  # the reason sdessm does not evaluate the block in one piece

# %% [markdown]
# The scalar OU process $dx = -\theta x\,dt + \sigma\,dW$ has the closed form
# $A = e^{-\theta s}$, $\Sigma = \sigma^2 (1 - e^{-2\theta s}) / (2\theta)$; from very short to
# very long steps:

# %%
theta, sigma = 0.5, 0.8
steps = np.array([1e-6, 1e-3, 0.1, 1.0, 10.0, 100.0])
A, Sigma = sdessm.discretize([[-theta]], [[sigma]], steps)
A_ou = np.exp(-theta * steps)
Sigma_ou = sigma**2 * -np.expm1(-2 * theta * steps) / (2 * theta)
err_A = np.abs(np.asarray(A)[:, 0, 0] / A_ou - 1)
err_S = np.abs(np.asarray(Sigma)[:, 0, 0] / Sigma_ou - 1)
for s, ea, es in zip(steps, err_A, err_S, strict=True):
    print(f"s = {s:<8g} relative error A {ea:.1e}, Sigma {es:.1e}")
print(f"max relative error (OU closed form): A {err_A.max():.2e}, Sigma {err_S.max():.2e}")
assert err_A.max() < 1e-13 and err_S.max() < 1e-13

# %% [markdown]
# ## (b) From $(A, \Sigma)$ back to $(F, Q)$
#
# The derivation recovers the SDE from
# $\begin{bmatrix} F & Q \\ 0 & -F^\top \end{bmatrix}
#  = \frac{1}{s}\log \begin{bmatrix} A & \Sigma A^{-\top} \\ 0 & A^{-\top} \end{bmatrix}$.
# Round trip: discretise, recover, compare.

# %%
rows, refused = [], []
for name, (F, L) in systems.items():
    Q = L @ L.T
    for s in (0.1, 1.0):
        A, Sigma = sdessm.discretize(F, L, s)
        try:
            F_back, Q_back = sdessm.sde_from_discrete(A, Sigma, s)
        except sdessm.NoRealLogarithmError as err:
            refused.append((name, s))
            print(f"{name:<28} s = {s:<4} NoRealLogarithmError: {str(err)[:60]}...")
            continue
        rows.append((name, s, rel_err(F_back, F), rel_err(Q_back, Q)))
        print(f"{name:<28} s = {s:<4} F error {rows[-1][2]:.1e}, Q error {rows[-1][3]:.1e}")
max_F = max(r[2] for r in rows)
max_Q = max(r[3] for r in rows)
print(f"max relative round-trip error: F {max_F:.2e}, Q {max_Q:.2e}")
assert max_F < 1e-10 and max_Q < 1e-10
assert refused == [("stiff, |lambda| s up to 50", 1.0)]

# %% [markdown]
# The round trip is exact to round-off, with one refusal: the stiff system at $s = 1$. There
# $A$ has the eigenvalue $e^{-50} \approx 2 \times 10^{-22}$, below round-off relative to its
# largest one, so the computed $A$ is numerically singular and its logarithm is meaningless:
# one step of that length carries no information on the fast mode. This is a property of the
# inverse problem, not of the algorithm (the forward discretisation above is accurate there),
# and sdessm says so instead of returning a wrong $F$. Sample faster than the fastest mode you
# want to estimate.
#
# How the round trip degrades with the step, for the damped oscillator
# ($\omega = 2$, damped frequency $\approx 1.99$): the principal logarithm identifies a
# frequency only modulo $2\pi / s$, so it returns the true $F$ while $|\mathrm{Im}\,\lambda| <
# \pi / s$ (the Nyquist limit) and an *alias* beyond it.

# %%
F_osc, L_osc = systems["damped oscillator"]
nyquist_step = np.pi / np.abs(np.linalg.eigvals(F_osc).imag).max()
print(f"Nyquist step pi / |Im lambda| = {nyquist_step:.4f}")
for s in (0.1, 0.5, 1.0, 1.5, 0.9 * nyquist_step, 1.2 * nyquist_step):
    A, Sigma = sdessm.discretize(F_osc, L_osc, s)
    F_back, Q_back = sdessm.sde_from_discrete(A, Sigma, s)
    w, V = np.linalg.eigh(Q_back)  # Q_back has rank 1 here: factor it as V sqrt(w)
    A2, Sigma2 = sdessm.discretize(F_back, V * np.sqrt(np.clip(w, 0.0, None)), s)
    eig = np.linalg.eigvals(F_back)
    print(
        f"s = {s:.3f}: recovered eigenvalues {np.round(eig, 4)}, "
        f"F error {rel_err(F_back, F_osc):.1e}, same (A, Sigma) again: {rel_err(A2, A):.0e}"
    )

# %% [markdown]
# Beyond the Nyquist step the recovered $F$ is wrong (its frequency is $2\pi/s - 1.99$), yet it
# reproduces the same $(A, \Sigma)$: no data sampled at that step can tell the two SDEs apart.
# `fit_em` reports the distance to the branch cut (`report["nyquist_margin"]`) and warns with
# `NyquistWarning` near it.
#
# ### No real logarithm
#
# A real matrix $e^{Fs}$ never has a single negative real eigenvalue, so a fitted $A$ with one
# means no SDE explains the fit at this step (for example a series that flips sign at every
# sample). sdessm raises `NoRealLogarithmError` rather than returning a complex or a wrong $F$:

# %%
for A_bad in (np.array([[-0.5]]), np.diag([0.8, -0.3]), np.zeros((1, 1))):
    try:
        sdessm.sde_from_discrete(A_bad, 0.1 * np.eye(len(A_bad)), 1.0)
    except sdessm.NoRealLogarithmError as err:
        print(f"A = {A_bad.tolist()}: NoRealLogarithmError: {str(err)[:90]}...")
    else:
        raise AssertionError(f"A = {A_bad.tolist()} should have no real logarithm")

# %% [markdown]
# The same happens in a fit. Data from the discrete model $x_{k+1} = -0.8\,x_k + q_k$ (strongly
# anti-correlated from one sample to the next) are fitted with an OU process by closed-form EM.
# EM itself runs fine in $(A, \Sigma)$; the recovery at the end fails, and the exception
# carries the discrete fit (`err.result`), whose $A$ is close to $-0.8$.

# %%
flip = sdessm.LGSSMParams(
    A=[[-0.8]], Sigma=[[0.3]], H=[[1.0]], u=[0.0], R=[[0.05]], mu1=[0.0], P1=[[1.0]]
)
_, y_flip = sdessm.simulate(jax.random.key(1), flip, num_timesteps=400)
ou_start = sdessm.SDEParams(
    F=[[-1.0]], L=[[1.0]], H=[[1.0]], u=[0.0], R=[[0.1]], mu1=[0.0], P1=[[1.0]]
)
try:
    sdessm.fit_em(ou_start, y_flip, dt=1.0, fixed=("H", "u"), progress=False)
except sdessm.NoRealLogarithmError as err:
    A_fit = float(np.asarray(err.result.params.A)[0, 0])
    print(f"NoRealLogarithmError; the discrete fit has A = {A_fit:.3f}")
    assert A_fit < -0.5
else:
    raise AssertionError("expected NoRealLogarithmError")

# %% [markdown]
# ## (c) EM
#
# ### One M-step by hand
#
# The derivation's closed-form M-step, written with the smoothed means $m_k$, covariances
# $P_k$ and lag-one cross-covariances $C_k = \mathrm{Cov}[x_{k+1}, x_k \mid y]$ of
# `sdessm.rts_smoother`:
#
# $$S_{00} = \sum_{k=1}^{T-1} (P_k + m_k m_k^\top),\quad
#   S_{11} = \sum_{k=2}^{T} (P_k + m_k m_k^\top),\quad
#   S_{10} = \sum_{k=1}^{T-1} (C_k + m_{k+1} m_k^\top),$$
# $$A = S_{10} S_{00}^{-1},\qquad \Sigma = \frac{1}{T-1}\left(S_{11} - A S_{10}^\top\right),
#   \qquad \mu_1 = m_1,$$
# $$W = [H\ u] = \Big(\sum_k y_k \hat m_k^\top\Big)\Big(\sum_k E[\hat x_k \hat x_k^\top]\Big)^{-1},
#   \quad R = \frac1T \sum_k E[(y_k - W \hat x_k)(y_k - W \hat x_k)^\top],
#   \quad \hat x_k = [x_k; 1].$$
#
# ($P_1$ stays fixed: with one sequence its update would collapse onto the smoothed covariance
# of a single draw.) One `fit_em` iteration on a discrete model (`LGSSMParams`) must give
# exactly this.

# %%
d_true = sdessm.LGSSMParams(
    A=[[0.9, 0.2], [-0.3, 0.8]],
    Sigma=[[0.2, 0.05], [0.05, 0.1]],
    H=[[1.0, 0.0], [0.5, 1.0]],
    u=[0.3, -0.2],
    R=[[0.1, 0.02], [0.02, 0.15]],
    mu1=[0.0, 0.0],
    P1=np.eye(2),
)
T_small = 60
_, y_small = sdessm.simulate(jax.random.key(2), d_true, num_timesteps=T_small)
y_small = np.asarray(y_small)
guess = sdessm.LGSSMParams(
    A=0.5 * np.eye(2),
    Sigma=0.3 * np.eye(2),
    H=np.eye(2),
    u=np.zeros(2),
    R=0.3 * np.eye(2),
    mu1=np.ones(2),
    P1=np.eye(2),
)


def mstep_by_hand(params, y):
    sm = sdessm.rts_smoother(params, y)
    m, P, C = (np.asarray(a) for a in (sm.smoothed_means, sm.smoothed_covs, sm.cross_covs))
    Exx = P + m[:, :, None] * m[:, None, :]
    S00, S11 = Exx[:-1].sum(0), Exx[1:].sum(0)
    S10 = (C + m[1:, :, None] * m[:-1, None, :]).sum(0)
    A = S10 @ np.linalg.inv(S00)
    Sigma = (S11 - A @ S10.T) / (len(y) - 1)
    xhat = np.hstack([m, np.ones((len(y), 1))])
    Exhat = np.einsum("ti,tj->ij", xhat, xhat)
    Exhat[:-1, :-1] += P.sum(0)
    Eyx = y.T @ xhat
    W = Eyx @ np.linalg.inv(Exhat)
    R = (y.T @ y - Eyx @ W.T - W @ Eyx.T + W @ Exhat @ W.T) / len(y)
    return sdessm.LGSSMParams(A, Sigma, W[:, :-1], W[:, -1], R, m[0], np.asarray(params.P1))


by_hand = mstep_by_hand(guess, y_small)
one_step = sdessm.fit_em(
    guess, y_small, num_iters=1, finish="none", accelerate=False, progress=False
).params
mstep_errors = {k: rel_err(getattr(one_step, k), getattr(by_hand, k)) for k in by_hand._fields}
print("relative error, fit_em(num_iters=1) vs the derivation's M-step by hand:")
print({k: f"{v:.1e}" for k, v in mstep_errors.items()})
print(f"max: {max(mstep_errors.values()):.2e}")
assert max(mstep_errors.values()) < 1e-10

# %% [markdown]
# ### The log-likelihood never decreases
#
# The derivation's argument: the new parameters maximise the expected complete-data
# log-likelihood, and the log-likelihood rises by at least as much as that expectation does,
# because the remainder is a KL divergence. So EM's log-likelihood history must be
# non-decreasing. We fit the damped oscillator (500 steps of 0.1) from a poor start with F, L,
# H, u, R all free (the closed-form path, then the matrix logarithm), run 200 iterations and
# look at every increment.

# %%
osc_true = sdessm.SDEParams(
    F=F_osc, L=L_osc, H=[[1.0, 0.0]], u=[0.0], R=[[0.02]], mu1=[0.0, 0.0], P1=np.eye(2)
)
dt = 0.1
_, y_osc = sdessm.simulate(jax.random.key(3), osc_true, dt=dt, num_timesteps=500)
osc_start = sdessm.SDEParams(
    F=[[-0.5, 0.5], [-0.5, -0.5]],
    L=0.5 * np.eye(2),
    H=[[0.5, 0.5]],
    u=[0.5],
    R=[[0.2]],
    mu1=[0.0, 0.0],
    P1=np.eye(2),
)
with warnings.catch_warnings():
    warnings.simplefilter("error", sdessm.NyquistWarning)
    em = sdessm.fit_em(
        osc_start, y_osc, dt=dt, num_iters=200, finish="none", accelerate=False, progress=False
    )
lls = em.log_likelihoods
increments = np.diff(lls)
print(f"{em.num_iters} iterations ({em.report['stopped']}), path: {em.report['path']}")
print(f"log-likelihood {lls[0]:.4f} -> {lls[-1]:.6f}")
print(f"min of the increments: {increments.min():.3e}")
assert increments.min() >= -1e-9 * np.abs(lls).max(), "EM lowered the log-likelihood"

ll_returned = float(sdessm.log_likelihood(em.params, y_osc, dt=dt))
ll_discrete = float(sdessm.log_likelihood(em.discrete, y_osc))
print(f"last history entry            {lls[-1]:.12f}")
print(f"log_likelihood(em.params)     {ll_returned:.12f}  (the recovered SDE)")
print(f"log_likelihood(em.discrete)   {ll_discrete:.12f}  (the discrete fit)")
err_last = max(abs(ll_returned - lls[-1]), abs(ll_discrete - lls[-1])) / abs(lls[-1])
print(f"max relative difference: {err_last:.2e}")
assert err_last < 1e-9
print(
    "eigenvalues of F: fitted",
    np.linalg.eigvals(np.asarray(em.params.F)).round(3),
    " true",
    np.linalg.eigvals(F_osc).round(3),
)

fig = Figure(figsize=(10, 3.2), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
ax1.plot(lls, ".-", ms=3)
ax1.set(xlabel="EM iteration", ylabel="log-likelihood", title="EM history")
positive = increments > 0
ax2.semilogy(np.flatnonzero(positive) + 1, increments[positive], ".", ms=3, label="> 0")
if (~positive).any():
    ax2.semilogy(
        np.flatnonzero(~positive) + 1,
        np.abs(increments[~positive]) + 1e-300,
        "x",
        color="tab:red",
        label="<= 0 (round-off)",
    )
ax2.set(xlabel="EM iteration", ylabel="increment", title="log-likelihood increments")
ax2.legend(fontsize="small")
fig

# %% [markdown]
# Every increment is positive. They shrink slowly, not to zero within 200 iterations: with F,
# L and H all free the likelihood is flat along the changes of state coordinates $x \to Tx$,
# and plain EM (`accelerate=False`, the map of the derivation) converges only linearly,
# crawling along such weakly identified directions (by default `fit_em` accelerates it with
# SQUAREM and finishes with quasi-Newton steps on the exact log-likelihood). What remains is
# small (on these data, 800 more iterations add less than one unit of log-likelihood), and the
# eigenvalues of F, which do not depend on the coordinates, are already close to the true
# ones; the entries of F are not comparable.
#
# The recovered SDE gives the same log-likelihood as the discrete fit it came from, to
# round-off: the logarithm is an exact inverse of the discretisation.
#
# ## (d) The E-step against brute-force Gaussian conditioning
#
# All states and observations of a linear-Gaussian model are jointly Gaussian. On a tiny
# problem we build that joint distribution explicitly, with transitions from the SciPy
# reference of (a), and condition on the observed entries with dense linear algebra. The problem
# has irregular times, a partly missing observation vector and a fully missing one.


# %%
def dense_joint(As, Sigmas, H, u, R, mu1, P1, T):
    """Mean and covariance of w = (x_1..x_T, y_1..y_T) as one Gaussian vector."""
    H, u, R = (np.asarray(a, dtype=float) for a in (H, u, R))
    d, p = len(mu1), len(u)
    noise = scipy.linalg.block_diag(P1, *Sigmas, *([R] * T))  # e = (x_1 - mu1, q_k, r_k)
    G = np.zeros((T * (d + p), T * d + T * p))
    mean = np.zeros(T * (d + p))
    for k in range(T):  # x_k = A_{k-1} x_{k-1} + q_{k-1}
        rows = slice(k * d, (k + 1) * d)
        if k == 0:
            G[rows, :d], mean[rows] = np.eye(d), mu1
        else:
            prev = slice((k - 1) * d, k * d)
            G[rows] = As[k - 1] @ G[prev]
            G[rows, k * d : (k + 1) * d] += np.eye(d)
            mean[rows] = As[k - 1] @ mean[prev]
    for k in range(T):  # y_k = H x_k + u + r_k
        rows = slice(T * d + k * p, T * d + (k + 1) * p)
        G[rows] = H @ G[k * d : (k + 1) * d]
        G[rows, T * d + k * p : T * d + (k + 1) * p] += np.eye(p)
        mean[rows] = H @ mean[k * d : (k + 1) * d] + u
    return mean, G @ noise @ G.T


def condition(mean, cov, index, values):
    """N(mean, cov) given w[index] = values: posterior mean, covariance, log density of values."""
    K = np.linalg.solve(cov[np.ix_(index, index)], cov[index]).T
    post_mean = mean + K @ (values - mean[index])
    post_cov = cov - K @ cov[index]
    logpdf = scipy.stats.multivariate_normal(mean[index], cov[np.ix_(index, index)]).logpdf(values)
    return post_mean, 0.5 * (post_cov + post_cov.T), float(logpdf)


sde_tiny = sdessm.SDEParams(
    F=[[-0.3, 1.2], [-1.0, -0.4]],
    L=[[0.4, 0.0], [0.2, 0.6]],
    H=[[1.0, 0.0], [0.3, 1.0]],
    u=[0.1, -0.2],
    R=[[0.05, 0.01], [0.01, 0.08]],
    mu1=[0.5, -0.5],
    P1=[[1.0, 0.2], [0.2, 0.5]],
)
times_tiny = np.array([0.0, 0.3, 0.5, 1.4, 1.5, 2.7, 3.0])
T_tiny, d, p = len(times_tiny), 2, 2
_, y_tiny = sdessm.simulate(jax.random.key(4), sde_tiny, times_tiny)
y_tiny = np.array(y_tiny)
y_tiny[2, 1] = np.nan  # partly missing
y_tiny[4, :] = np.nan  # fully missing

F_t, Q_t = np.asarray(sde_tiny.F), np.asarray(sde_tiny.Q)
refs = [reference_discretize(F_t, Q_t, s) for s in np.diff(times_tiny)]
mean, cov = dense_joint(
    [a for a, _ in refs],
    [s for _, s in refs],
    sde_tiny.H,
    sde_tiny.u,
    sde_tiny.R,
    np.asarray(sde_tiny.mu1),
    np.asarray(sde_tiny.P1),
    T_tiny,
)
y_flat = y_tiny.reshape(-1)
observed = np.flatnonzero(~np.isnan(y_flat)) + T_tiny * d  # positions in w
post_mean, post_cov, loglik_ref = condition(mean, cov, observed, y_flat[~np.isnan(y_flat)])


def x_block(k):
    return slice(k * d, (k + 1) * d)


sm = sdessm.rts_smoother(sde_tiny, y_tiny, times_tiny)
kf = sdessm.kalman_filter(sde_tiny, y_tiny, times_tiny)
errors = {
    "smoothed means": rel_err(sm.smoothed_means, post_mean[: T_tiny * d].reshape(T_tiny, d)),
    "smoothed covs": rel_err(
        sm.smoothed_covs, [post_cov[x_block(k), x_block(k)] for k in range(T_tiny)]
    ),
    "cross covs Cov[x_k+1, x_k]": rel_err(
        sm.cross_covs, [post_cov[x_block(k + 1), x_block(k)] for k in range(T_tiny - 1)]
    ),
    "log-likelihood (smoother)": rel_err(sm.log_likelihood, loglik_ref),
    "log-likelihood (filter)": rel_err(kf.log_likelihood, loglik_ref),
    "log_likelihood()": rel_err(sdessm.log_likelihood(sde_tiny, y_tiny, times_tiny), loglik_ref),
}
# filtered moments: condition on the observations up to and including step k
filt_m, filt_P = [], []
for k in range(T_tiny):
    upto = observed[observed < T_tiny * d + (k + 1) * p]
    m_k, P_k, _ = condition(mean, cov, upto, y_flat[upto - T_tiny * d])
    filt_m.append(m_k[x_block(k)])
    filt_P.append(P_k[x_block(k), x_block(k)])
errors["filtered means"] = rel_err(kf.filtered_means, filt_m)
errors["filtered covs"] = rel_err(kf.filtered_covs, filt_P)
for name, e in errors.items():
    print(f"{name:<28} {e:.1e}")
print(f"max relative error: {max(errors.values()):.2e}")
assert max(errors.values()) < 1e-9

# %% [markdown]
# ### The expected sufficient statistics, missing values included
#
# The M-step needs more than the smoother moments when observations are missing: following
# Shumway and Stoffer, a missing entry of $y_k$ is latent, and its conditional moments enter
# the emission statistics $\sum_k E[y_k \hat x_k^\top]$ and $\sum_k E[y_k y_k^\top]$. The dense
# posterior gives all of them at once (the missing $y$ entries are part of the Gaussian
# vector), so we can apply the derivation's M-step to the brute-force statistics and compare
# with one `fit_em` iteration on the same data. A discrete model on uniform steps keeps the
# closed form for every field. A step with nothing observed is left out of the emission sums
# (`emitted` below): as a latent observation it would only pull $H$, $u$, $R$ toward their
# current values, which changes the path of EM but not its fixed points.

# %%
y_miss = y_small[:12].copy()
y_miss[3, 0] = np.nan  # partly missing
y_miss[7, :] = np.nan  # fully missing
y_miss[9, 1] = np.nan
T_m = len(y_miss)
g = guess._replace(A=np.asarray(guess.A), Sigma=np.asarray(guess.Sigma))
mean_m, cov_m = dense_joint(
    [g.A] * (T_m - 1),
    [g.Sigma] * (T_m - 1),
    g.H,
    g.u,
    g.R,
    np.asarray(g.mu1),
    np.asarray(g.P1),
    T_m,
)
flat = y_miss.reshape(-1)
obs_idx = np.flatnonzero(~np.isnan(flat)) + T_m * d
pm, pc, _ = condition(mean_m, cov_m, obs_idx, flat[~np.isnan(flat)])
second = pc + np.outer(pm, pm)  # E[w w^T | observed], w = (x_1..x_T, y_1..y_T)
xs = [x_block(k) for k in range(T_m)]
ys = [slice(T_m * d + k * p, T_m * d + (k + 1) * p) for k in range(T_m)]
S00 = sum(second[xs[k], xs[k]] for k in range(T_m - 1))
S11 = sum(second[xs[k], xs[k]] for k in range(1, T_m))
S10 = sum(second[xs[k + 1], xs[k]] for k in range(T_m - 1))
emitted = [k for k in range(T_m) if not np.isnan(y_miss[k]).all()]
Eyx = sum(np.hstack([second[ys[k], xs[k]], pm[ys[k]][:, None]]) for k in emitted)
Eyy = sum(second[ys[k], ys[k]] for k in emitted)
Exx = sum(
    np.block([[second[xs[k], xs[k]], pm[xs[k]][:, None]], [pm[xs[k]][None, :], np.ones((1, 1))]])
    for k in emitted
)
A_ref = S10 @ np.linalg.inv(S00)
W_ref = Eyx @ np.linalg.inv(Exx)
dense_mstep = {
    "A": A_ref,
    "Sigma": (S11 - A_ref @ S10.T) / (T_m - 1),
    "H": W_ref[:, :-1],
    "u": W_ref[:, -1],
    "R": (Eyy - Eyx @ W_ref.T - W_ref @ Eyx.T + W_ref @ Exx @ W_ref.T) / len(emitted),
    "mu1": pm[xs[0]],
}
one = sdessm.fit_em(
    guess, y_miss, num_iters=1, finish="none", accelerate=False, progress=False
).params
stat_errors = {k: rel_err(getattr(one, k), v) for k, v in dense_mstep.items()}
print("relative error, fit_em(num_iters=1) vs the M-step on brute-force statistics:")
print({k: f"{v:.1e}" for k, v in stat_errors.items()})
print(f"max: {max(stat_errors.values()):.2e}")
assert max(stat_errors.values()) < 1e-9

# %% [markdown]
# ## Summary
#
# Every printed maximum error is at round-off level (or at the quadrature's tolerance, for
# the discretisation): the implementation computes what the derivation says. The two places
# where the mathematics itself limits what can be recovered, a fast mode sampled far too
# slowly and a frequency beyond the Nyquist limit, show up as such, and a fit without a real
# logarithm fails loudly with `NoRealLogarithmError`.
