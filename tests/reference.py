"""Slow but obvious reference implementations, in NumPy/SciPy only (no sdessm code), and the
models the tests share.

- `dense_*`: the joint Gaussian of all states and observations of one sequence, built densely and
  conditioned on the observed entries with plain linear algebra.
- `quadrature_sigma`: the transition covariance integral by adaptive quadrature.
- `random_problem`: random stable models, missing masks and per-step parameters.
- model factories (`linear_sde`, `scalar_ou`, `oscillator`, `random_sde`, `sde_params`) and
  `with_missing`: the parameters and data of the tests, named by what they are. They build
  `sdessm.SDEParams` (the container only); no reference computation above uses sdessm.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.integrate
import scipy.linalg
import scipy.stats

import sdessm


def random_stable_drift(rng, d, rate=1.0):
    """A random drift with eigenvalue real parts in [-1.5 rate, -0.2 rate]."""
    V = rng.normal(size=(d, d)) + 2.0 * np.eye(d)
    lam = -rate * rng.uniform(0.2, 1.5, size=d)
    F = V @ np.diag(lam) @ np.linalg.inv(V)
    S = rng.normal(size=(d, d)) * 0.3
    return F + rate * (S - S.T) * 0.5  # add some rotation


def random_spd(rng, n, scale=1.0, floor=0.1):
    M = rng.normal(size=(n, n))
    return scale * (M @ M.T / n + floor * np.eye(n))


def quadrature_sigma(F, Q, s):
    """Sigma(s) = int_0^s expm(F r) Q expm(F r)^T dr by adaptive quadrature."""

    def integrand(r):
        E = scipy.linalg.expm(F * r)
        return E @ Q @ E.T

    val, _ = scipy.integrate.quad_vec(integrand, 0.0, s, epsabs=1e-14, epsrel=1e-12)
    return val


def per_step(x, n, base_ndim):
    """Broadcast a shared field to a leading axis of length n."""
    x = np.asarray(x, dtype=float)
    return x if x.ndim > base_ndim else np.broadcast_to(x, (n,) + x.shape)


def dense_joint(A, Sigma, H, u, R, mu1, P1, T):
    """Mean and covariance of the stacked states X (T d) and observations Y (T p)."""
    d = len(mu1)
    A, Sigma = per_step(A, T - 1, 2), per_step(Sigma, T - 1, 2)
    H, u, R = per_step(H, T, 2), per_step(u, T, 1), per_step(R, T, 2)
    p = H.shape[1]
    # X = G @ [x_1; q_1; ...; q_{T-1}] with independent Gaussian blocks
    G = np.zeros((T * d, T * d))
    for k in range(T):
        for j in range(k + 1):  # block j is x_1 (j = 0) or q_j
            Phi = np.eye(d)
            for i in range(j, k):
                Phi = A[i] @ Phi
            G[k * d : (k + 1) * d, j * d : (j + 1) * d] = Phi
    D = scipy.linalg.block_diag(P1, *Sigma)
    mean_x = G[:, :d] @ mu1
    cov_x = G @ D @ G.T
    Hb = scipy.linalg.block_diag(*H)
    mean_y = Hb @ mean_x + u.reshape(-1)
    cov_y = Hb @ cov_x @ Hb.T + scipy.linalg.block_diag(*R)
    cov_xy = cov_x @ Hb.T
    return mean_x, cov_x, mean_y, cov_y, cov_xy, d, p


def dense_posterior(params, y, upto=None):
    """Moments of X | observed entries of y[:upto] and the log-likelihood of those entries.

    Returns (means (T, d), covs (T, T, d, d) all blocks, loglik).
    """
    y = np.asarray(y, dtype=float)
    T = y.shape[0]
    mean_x, cov_x, mean_y, cov_y, cov_xy, d, p = dense_joint(*params[:7], T)
    flat = y.reshape(-1)
    obs = ~np.isnan(flat)
    if upto is not None:
        obs[upto * p :] = False
    idx = np.flatnonzero(obs)
    if idx.size:
        C = cov_y[np.ix_(idx, idx)]
        K = np.linalg.solve(C, cov_xy[:, idx].T).T
        mean = mean_x + K @ (flat[idx] - mean_y[idx])
        cov = cov_x - K @ cov_xy[:, idx].T
        loglik = scipy.stats.multivariate_normal(mean_y[idx], C).logpdf(flat[idx])
    else:
        mean, cov, loglik = mean_x, cov_x, 0.0
    blocks = cov.reshape(T, d, T, d).transpose(0, 2, 1, 3)
    return mean.reshape(T, d), blocks, float(loglik)


def dense_smoother(params, y):
    """Smoothed means (T, d), covariances (T, d, d), Cov[x_{k+1}, x_k] (T-1, d, d), loglik."""
    means, blocks, loglik = dense_posterior(params, y)
    T = means.shape[0]
    covs = np.stack([blocks[k, k] for k in range(T)])
    cross = np.stack([blocks[k + 1, k] for k in range(T - 1)]) if T > 1 else np.zeros((0,) * 3)
    return means, covs, cross, loglik


def dense_filter(params, y):
    """Filtered and predicted means/covariances by conditioning on y[:k+1] and y[:k]."""
    T = np.asarray(y).shape[0]
    fm, fc, pm, pc = [], [], [], []
    for k in range(T):
        m, c, _ = dense_posterior(params, y, upto=k + 1)
        fm.append(m[k])
        fc.append(c[k, k])
        m, c, _ = dense_posterior(params, y, upto=k)
        pm.append(m[k])
        pc.append(c[k, k])
    return np.stack(fm), np.stack(fc), np.stack(pm), np.stack(pc)


def random_driven_problem(rng, T=6, d=2, p=2, m=2, *, irregular=True):
    """A random stable SDE with inputs (NumPy float64 fields), times, inputs, y with NaN."""
    sde = dict(
        F=random_stable_drift(rng, d),
        L=rng.normal(size=(d, d)) * 0.7,
        H=rng.normal(size=(p, d)),
        u=rng.normal(size=p),
        R=random_spd(rng, p, 0.3),
        mu1=rng.normal(size=d),
        P1=random_spd(rng, d),
        B=rng.normal(size=(d, m)),
        D=rng.normal(size=(p, m)),
    )
    steps = rng.uniform(0.05, 0.6, size=T - 1) if irregular else np.full(T - 1, 0.3)
    times = np.concatenate([[0.3], 0.3 + np.cumsum(steps)])
    v = rng.normal(size=(T, m)) * 1.5
    y = rng.normal(size=(T, p)) * 2.0
    return sde, times, v, y


def moment_pairs(filt, smooth, params, y, b=None):
    """`(pairs, loglik)`: every moment of the filter result `filt` and smoother result `smooth`
    (of sequence `b` when given) paired with the dense Gaussian's of `y` under `params`
    (filtered, predicted, smoothed and cross moments), and the dense log-likelihood."""
    got = (*filt[:4], *smooth[:3])
    want = dense_filter(params, y) + dense_smoother(params, y)[:3]
    pairs = [(g if b is None else g[b], w) for g, w in zip(got, want, strict=True)]
    return pairs, dense_posterior(params, y)[2]


def random_problem(rng, T, d, p, *, per_step_emissions=False, irregular=False, missing=0.0):
    """A random SDE, its time grid, and the discrete-model arrays on that grid (via SciPy).

    Returns (sde dict, times, lgssm tuple (A, Sigma, H, u, R, mu1, P1), y with NaNs).
    """
    F = random_stable_drift(rng, d)
    L = rng.normal(size=(d, d)) * 0.7
    Q = L @ L.T
    steps = rng.uniform(0.05, 0.6, size=T - 1) if irregular else np.full(T - 1, 0.2)
    times = np.concatenate([[0.3], 0.3 + np.cumsum(steps)])
    A = np.stack([scipy.linalg.expm(F * s) for s in steps])
    Sigma = np.stack([quadrature_sigma(F, Q, s) for s in steps]) if irregular else None
    if Sigma is None:
        Sigma = np.broadcast_to(quadrature_sigma(F, Q, steps[0]), (T - 1, d, d)).copy()
    if per_step_emissions:
        H = rng.normal(size=(T, p, d))
        u = rng.normal(size=(T, p))
        R = np.stack([random_spd(rng, p, 0.3) for _ in range(T)])
    else:
        H, u, R = rng.normal(size=(p, d)), rng.normal(size=p), random_spd(rng, p, 0.3)
    mu1, P1 = rng.normal(size=d), random_spd(rng, d)
    y = rng.normal(size=(T, p)) * 2.0
    if missing:
        y = with_missing(rng, y, missing)
    sde = dict(F=F, L=L, H=H, u=u, R=R, mu1=mu1, P1=P1)
    return sde, times, (A, Sigma, H, u, R, mu1, P1), y


def dense_complete_posterior(params, y):
    """Posterior mean (T, d + p) and covariance (T, T, d + p, d + p) of z_k = [x_k; y_k].

    Missing entries of y are latent: their posterior comes from the same dense conditioning.
    """
    y = np.asarray(y, dtype=float)
    T = y.shape[0]
    mean_x, cov_x, mean_y, cov_y, cov_xy, d, p = dense_joint(*params[:7], T)
    mean = np.concatenate([mean_x, mean_y])
    cov = np.block([[cov_x, cov_xy], [cov_xy.T, cov_y]])
    flat = y.reshape(-1)
    idx = T * d + np.flatnonzero(~np.isnan(flat))
    if idx.size:
        K = np.linalg.solve(cov[np.ix_(idx, idx)], cov[idx, :]).T
        mean = mean + K @ (flat[idx - T * d] - mean[idx])
        cov = cov - K @ cov[idx, :]
    # reorder into per-time blocks [x_k; y_k]
    order = np.concatenate(
        [np.r_[k * d : (k + 1) * d, T * d + k * p : T * d + (k + 1) * p] for k in range(T)]
    )
    mean, cov = mean[order], cov[np.ix_(order, order)]
    n = d + p
    return mean.reshape(T, n), cov.reshape(T, n, T, n).transpose(0, 2, 1, 3)


def dense_stats(params, ys):
    """Reference E-step sums over sequences ys (B, T, p), emissions summed over steps; an
    all-NaN step adds no emission."""
    d = len(params[-2])
    out = dict(x1=0.0, x1x1=0.0, S00=0.0, S10=0.0, S11=0.0, yy=0.0, yx=0.0, xx=0.0)
    for y in ys:
        mean, cov = dense_complete_posterior(params, y)
        T = mean.shape[0]
        second = lambda i, j, c=cov, m=mean: c[i, j] + np.outer(m[i], m[j])  # noqa: E731
        out["x1"] = out["x1"] + mean[0, :d]
        out["x1x1"] = out["x1x1"] + second(0, 0)[:d, :d]
        for k in range(T - 1):
            out["S00"] = out["S00"] + second(k, k)[:d, :d]
            out["S11"] = out["S11"] + second(k + 1, k + 1)[:d, :d]
            out["S10"] = out["S10"] + second(k + 1, k)[:d, :d]
        for k in range(T):
            if np.all(np.isnan(y[k])):
                continue
            z = second(k, k)
            xhat = np.zeros((d + 1, d + 1))
            xhat[:d, :d], xhat[:d, d], xhat[d, :d], xhat[d, d] = (
                z[:d, :d],
                mean[k, :d],
                mean[k, :d],
                1,
            )
            out["yy"] = out["yy"] + z[d:, d:]
            out["yx"] = out["yx"] + np.concatenate([z[d:, :d], mean[k, d:, None]], axis=1)
            out["xx"] = out["xx"] + xhat
    return out


# --------------------------------------------------------------------------- model factories
# Fields are NumPy float64 arrays. A number for `L`, `R` or `P1` is that multiple of the identity,
# a number for `u` or `mu1` that value in every entry.


def _matrix(x, n):
    return x * np.eye(n) if np.ndim(x) == 0 else np.asarray(x, dtype=float)


def _vector(x, n):
    return np.full(n, x, dtype=float) if np.ndim(x) == 0 else np.asarray(x, dtype=float)


def linear_sde(F, L=1.0, H=None, *, u=0.0, R=1.0, mu1=0.0, P1=1.0):
    """The LTI SDE dx = F x dt + L dW observed as y = H x + u + N(0, R), H = I if not given."""
    F = np.asarray(F, dtype=float)
    d = F.shape[0]
    H = np.eye(d) if H is None else np.asarray(H, dtype=float)
    p = H.shape[0]
    L, R, P1 = _matrix(L, d), _matrix(R, p), _matrix(P1, d)
    return sdessm.SDEParams(F, L, H, _vector(u, p), R, _vector(mu1, d), P1)


def scalar_ou(theta, sigma=1.0, *, u=0.0, R=1.0, mu1=0.0, P1=1.0):
    """The scalar OU dx = -theta x dt + sigma dW observed as y = x + u + N(0, R)."""
    # 0.0 - theta: theta = 0 (a random walk) gives the drift +0.0, as a written [[0.0]] does
    return linear_sde([[0.0 - theta]], [[sigma]], u=u, R=R, mu1=mu1, P1=P1)


def oscillator(omega, zeta, sigma, *, H=((1.0, 0.0),), u=0.0, R=1.0, mu1=0.0, P1=1.0):
    """A damped oscillator x = (position, velocity), noise sigma on the velocity, position seen."""
    F = np.array([[0.0, 1.0], [-(omega**2), -2 * zeta * omega]])
    return linear_sde(F, [[0.0], [sigma]], H, u=u, R=R, mu1=mu1, P1=P1)


def random_sde(rng, d, p, *, L_scale=0.6, R_scale=0.2, H=None, random_x1=True):
    """A random stable d-dim SDE with p observations (x_1 ~ N(0, I) unless random_x1)."""
    return sdessm.SDEParams(
        F=random_stable_drift(rng, d),
        L=rng.normal(size=(d, d)) * L_scale,
        H=rng.normal(size=(p, d)) if H is None else H,
        u=rng.normal(size=p),
        R=random_spd(rng, p, R_scale),
        mu1=rng.normal(size=d) if random_x1 else np.zeros(d),
        P1=random_spd(rng, d) if random_x1 else np.eye(d),
    )


def sde_params(sde, *, as_jax=False):
    """The SDEParams of a `random_problem` SDE dict (its fields as JAX arrays with as_jax)."""
    return sdessm.SDEParams(**({k: jnp.asarray(v) for k, v in sde.items()} if as_jax else sde))


def with_missing(rng, y, fraction, *, rows=False):
    """A copy of y with each entry (each row with rows) NaN with probability fraction."""
    y = np.array(y)
    y[rng.uniform(size=len(y) if rows else y.shape) < fraction] = np.nan
    return y
