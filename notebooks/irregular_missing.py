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
# # Irregular sampling and missing values
#
# Real records are rarely sampled on a grid, and some values are always missing. A model in
# continuous time handles both without any preprocessing:
#
# - **Irregular times.** Each transition uses its own step $\Delta t_k = t_{k+1} - t_k$, with the
#   exact transition $A_k = e^{F \Delta t_k}$, $\Sigma_k = \int_0^{\Delta t_k} e^{Fr} Q
#   e^{F^\top r} dr$. Nothing is interpolated onto a grid.
# - **Missing values are NaN.** A NaN entry of $y$ is simply not observed: the Kalman filter
#   leaves it out of the update and the likelihood, a vector may be partly missing, and EM
#   treats the missing entries as latent. Nothing is imputed.
#
# We use the zoo's two-dimensional Ornstein-Uhlenbeck model (`multivariate_ou`): both
# coordinates of $dx = F x\,dt + L\,dW$ are observed with noise ($H = I$), and the drift couples
# them, $F = \begin{bmatrix} -a_1 & b_{12} \\ b_{21} & -a_2 \end{bmatrix}$.

# %%
# %matplotlib inline
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from matplotlib.figure import Figure
from sdessm.models import load

import sdessm
from sdessm.diagnostics import plot_recovery, plot_smoothed_states, recovery_table
from sdessm.infer import fit_nuts

jax.config.update("jax_enable_x64", True)  # a notebook is an entry point: compute in float64
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## The model

# %%
mou = load("multivariate_ou")
print(mou.__doc__.strip().splitlines()[0])
truth = {k: np.asarray(v, dtype=float) for k, v in mou.TRUE_PARAMS.items()}
sde_true = mou.to_sde(**{k: jnp.asarray(v) for k, v in truth.items()})
F_true, Q_true = np.asarray(sde_true.F), np.asarray(sde_true.Q)
P_inf = scipy.linalg.solve_continuous_lyapunov(F_true, -Q_true)  # F P + P F^T + Q = 0
print("F =\n", F_true)
print("Q = L L^T =\n", Q_true)
print("eigenvalues of F:", np.linalg.eigvals(F_true))
print("stationary sd of the state:", np.sqrt(np.diag(P_inf)))

# %% [markdown]
# ## Irregular times, with an outage
#
# 150 observation times with exponentially distributed gaps (mean 0.3), recorded on a clock
# of resolution 0.1, and one outage of 6 time units, several times the slowest relaxation
# time $1/\min|\mathrm{Re}\,\lambda| \approx 1.5$. sdessm computes one matrix exponential per
# *distinct* step, so a clock resolution keeps the cost down; arbitrary real-valued times work
# the same way, with one exponential per step.

# %%
rng = np.random.default_rng(1)
T = 150
gaps = np.maximum(np.round(rng.exponential(0.3, size=T - 1), 1), 0.1)
outage = 90
gaps[outage] = 6.0
times = np.concatenate([[0.0], np.cumsum(gaps)])
print(
    f"T = {T}, span {times[-1]:.1f}; gaps from {gaps.min():.1f} to {gaps.max():.1f}, "
    f"{len(np.unique(gaps))} distinct"
)
print(f"outage between t = {times[outage]:.1f} and t = {times[outage + 1]:.1f}")

# %% [markdown]
# ## Simulate, then remove values
#
# We simulate exactly at these times, then remove (set to NaN) 15% of the entries at random,
# independently per coordinate, so that some vectors are missing one coordinate and a few
# both; and the second sensor fails for a stretch of 20 observations while the first keeps
# reporting.

# %%
x, y = sdessm.simulate(jax.random.key(1), sde_true, times)
x, y = np.asarray(x), np.array(y)
y[rng.uniform(size=y.shape) < 0.15] = np.nan
dropout = slice(40, 60)
y[dropout, 1] = np.nan
n_missing = np.isnan(y).sum(axis=1)
print(
    f"rows complete: {(n_missing == 0).sum()}, one coordinate missing: "
    f"{(n_missing == 1).sum()}, both missing: {(n_missing == 2).sum()}"
)
print("the first rows of y, as given to sdessm:\n", y[:6])

# %% [markdown]
# That array, NaN and all, is the data: every function below takes it as it is.
#
# ## Smoothing through the gaps
#
# The smoother reports the states at the times of the rows of `y`; the outage is one step, so
# none of them lies inside it. To see the states there we add times inside the outage with
# all-NaN rows: a NaN row is a time at which we want the state but have no data. It carries
# no information, so it must leave the likelihood unchanged, to round-off.

# %%
inner = np.linspace(times[outage], times[outage + 1], 13)[1:-1]
times_f = np.sort(np.concatenate([times, inner]))
at_obs = np.searchsorted(times_f, times)  # the rows of the original times
y_f = np.full((len(times_f), 2), np.nan)
y_f[at_obs] = y
x_f = np.full((len(times_f), 2), np.nan)  # the true states, drawn where we simulated them
x_f[at_obs] = x
ll = float(sdessm.log_likelihood(sde_true, y, times))
ll_f = float(sdessm.log_likelihood(sde_true, y_f, times_f))
print(f"log-likelihood: data as given {ll:.10f}, with the added NaN rows {ll_f:.10f}")
assert abs(ll_f - ll) <= 1e-12 * abs(ll)

# %% [markdown]
# The smoother at the true parameters, with 95% bands. Where data are dense the bands are
# narrow; through the outage they widen towards the stationary spread of the process and
# narrow again when data resume. During the sensor-2 dropout the second coordinate is still
# constrained, through the coupling $b_{21}$ and the first sensor, so its band widens less
# than in the outage.

# %%
smoothed = sdessm.rts_smoother(sde_true, y_f, times_f)
plot_smoothed_states(times_f, smoothed, y_f, x_f, H=sde_true.H)

# %%
sd = np.sqrt(np.diagonal(np.asarray(smoothed.smoothed_covs), axis1=-2, axis2=-1))
errors = np.abs(x - np.asarray(smoothed.smoothed_means)[at_obs])
inside = errors <= 1.96 * sd[at_obs]
typical = np.median(sd[at_obs], axis=0)
widest = sd[np.isin(times_f, inner)].max(axis=0)
dropout_sd = sd[at_obs][dropout, 1].max()
print("fraction of true states inside the 95% band:", inside.mean(axis=0))
print("typical smoothed sd (median):     ", typical)
print("widest smoothed sd in the outage: ", widest)
print("stationary sd:                    ", np.sqrt(np.diag(P_inf)))
print(f"widest smoothed sd of x[1] in the sensor-2 dropout: {dropout_sd:.4f}")
assert np.all(inside.mean(axis=0) > 0.85)
assert np.all(widest > 3 * typical) and np.all(widest <= np.sqrt(np.diag(P_inf)))
assert typical[1] < dropout_sd < widest[1]

fig = Figure(figsize=(10, 3.2), layout="constrained")
ax = fig.subplots()
for i, color in enumerate(("tab:blue", "tab:green")):
    ax.plot(times_f, sd[:, i], ".-", ms=3, color=color, label=f"smoothed sd of x[{i}]")
    ax.axhline(np.sqrt(P_inf[i, i]), color=color, ls=":", label=f"stationary sd of x[{i}]")
ax.axvspan(times[outage], times[outage + 1], color="0.85", label="outage")
ax.axvspan(
    times[dropout][0], times[dropout][-1], color="tab:orange", alpha=0.2, label="sensor 2 dropout"
)
ax.set(xlabel="time", ylabel="posterior sd")
ax.legend(fontsize="small", ncols=3, loc="upper left")
fig

# %% [markdown]
# In the middle of the outage the uncertainty approaches, but stays below, the stationary
# spread of the process: six time units is long against the relaxation times, so the data on
# either side say little there.
#
# ## EM on irregular, partly missing data
#
# `fit_em(model, ...)` on the NumPyro model: with irregular steps there is no single $(A,
# \Sigma)$ to fit in closed form, so every M-step maximises the expected complete-data
# log-likelihood numerically over the model's parameters (L-BFGS from the current value,
# statistics grouped by distinct step), here with the log-prior added (MAP). Missing entries
# are latent in the E-step. We start at 0.7 times the truth.

# %%
start = {k: 0.7 * v for k, v in truth.items()}
em = sdessm.fit_em(mou.model, y, times, init=start, objective="map", progress=False)
print(f"{em.num_iters} iterations ({em.report['stopped']}), path: {em.report['path']}")
log_post = np.asarray(em.report["log_posteriors"])
print(
    f"log-posterior {log_post[0]:.3f} -> {log_post[-1]:.3f}; "
    f"smallest increment {np.diff(log_post).min():.2e}"
)
assert em.converged
assert np.diff(log_post).min() >= -1e-9 * np.abs(log_post).max()
ll_direct = float(sdessm.log_likelihood(em.sde, y, times))
assert abs(ll_direct - em.log_likelihood) <= 1e-8 * abs(ll_direct)
for k in truth:
    print(f"  {k:<7} truth {np.round(truth[k], 3)!s:<14} EM {np.round(em.params[k], 3)}")
print(
    "eigenvalues of F: EM",
    np.linalg.eigvals(np.asarray(em.sde.F)).round(3),
    " truth",
    np.linalg.eigvals(F_true).round(3),
)

# %% [markdown]
# ## A short NUTS run
#
# NUTS on the same model and data, the states integrated out by the Kalman filter, chains
# started at the EM estimate: 2 chains of 150 warm-up and 150 kept draws, enough for a first
# look at the uncertainty (not for precise tail quantiles).

# %%
idata = fit_nuts(
    mou.model,
    y,
    times,
    num_warmup=150,
    num_samples=150,
    num_chains=2,
    init=em,
    truth=truth,
    seed=1,
    progress=False,
)
table = recovery_table(idata)
columns = ["truth", "em", "mean", "sd", "hdi_low", "hdi_high", "r_hat", "ess_bulk"]
print(table[columns].to_string(float_format=lambda v: f"{v:.4g}"))
z = (table["mean"] - table["truth"]) / table["sd"]
print("\n(posterior mean - truth) / posterior sd:", z.round(2).to_dict())
print("posterior sd / |posterior mean|:", (table["sd"] / table["mean"].abs()).round(2).to_dict())
print("truth in the 94% HDI:", int(table["truth_in_hdi"].sum()), "of", len(table))
print("EM in the 94% HDI:   ", int(table["em_in_hdi"].sum()), "of", len(table))
assert table["r_hat"].max() < 1.1
assert np.all(np.abs(z) < 4)

# %%
plot_recovery(table)

# %% [markdown]
# ## Reading the results
#
# - **The truth.** Every true value lies within about one posterior sd of the posterior mean
#   and inside the 94% interval. The EM estimate (the posterior mode) lies inside the
#   intervals too, up to about half a posterior sd from the posterior mean: a mode and a mean
#   differ where the posterior is skewed, as it is for these positive rates and scales.
# - **Precision.** 150 noisy, partly missing observations over about 55 time units, some 35
#   relaxation times, determine this model only roughly. The diffusion diagonal is the best
#   determined here (posterior sd around an eighth of its value); the drift entries and the
#   small observation noise much less (a quarter to a half). A drift is learnt from how fast
#   deviations decay, and a short record holds few decays; the posterior intervals, not the
#   point estimates, are the honest summary.
# - **Mixing.** R-hat within a few hundredths of 1 and bulk ESS of the order of 100 per
#   parameter are adequate for this first look, not for final numbers: for those, run longer
#   chains, and more of them.
# - **No preprocessing.** Nothing in this notebook filled in a missing value or moved an
#   observation onto a grid: the likelihood, the smoother, EM and NUTS all used the data as
#   recorded.
