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
# # Quickstart: a damped oscillator, fitted by EM and by NUTS
#
# We simulate data from a model whose truth we know, then recover it twice: once by EM (a point
# estimate, the posterior mode) and once by NUTS (the posterior distribution). Along the way we
# smooth the latent states and read the diagnostics.
#
# The model is the zoo's `damped_oscillator`: the state is $x = (\text{position}, \text{velocity})$,
#
# $$dx = \begin{bmatrix} 0 & 1 \\ -\omega^2 & -2\zeta\omega \end{bmatrix} x\,dt
#        + \begin{bmatrix} 0 \\ \sigma \end{bmatrix} dW, \qquad
#   y_k = \text{position}(t_k) + \varepsilon_k,\ \varepsilon_k \sim N(0, \text{noise}^2),$$
#
# and only the position is observed. The four named parameters are what we try to recover.

# %%
# %matplotlib inline
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from sdessm.models import load

import sdessm
from sdessm.diagnostics import (
    plot_em_history,
    plot_recovery,
    plot_smoothed_states,
    plot_trace_rank,
    recovery_table,
)
from sdessm.infer import fit_nuts

jax.config.update("jax_enable_x64", True)  # a notebook is an entry point: compute in float64
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## The model and its true parameters
#
# A zoo model is a NumPyro model file: `model(times, y=None)` puts priors on the named
# parameters, `TRUE_PARAMS` holds default values for simulation and `to_sde` builds the
# continuous-time parameters (`SDEParams`: F, L, H, u, R, mu1, P1) from the named ones.

# %%
osc = load("damped_oscillator")
print(osc.__doc__.strip().splitlines()[0])
truth = {k: float(v) for k, v in osc.TRUE_PARAMS.items()}
sde_true = osc.to_sde(**{k: jnp.asarray(v) for k, v in truth.items()})
print("truth:", truth)
print("F =\n", np.asarray(sde_true.F))
print("eigenvalues of F:", np.linalg.eigvals(np.asarray(sde_true.F)))
print(f"period 2 pi / omega = {2 * np.pi / truth['omega']:.2f} time units")

# %% [markdown]
# ## Simulate
#
# 300 observations 0.1 time units apart (30 time units, about ten periods), simulated exactly:
# the SDE is discretised with the matrix exponential, not with an Euler scheme. A tenth of the
# observations are then removed. A missing value is simply NaN: nothing is imputed, the Kalman
# filter skips it.

# %%
T, dt = 300, 0.1
times = np.arange(T) * dt
x, y = sdessm.simulate(jax.random.key(0), sde_true, times)
x, y = np.asarray(x), np.array(y)
y[np.random.default_rng(0).uniform(size=y.shape) < 0.1] = np.nan
print(f"x: {x.shape}, y: {y.shape}, missing: {int(np.isnan(y).sum())} of {y.size}")

fig = Figure(figsize=(10, 2.8), layout="constrained")
ax = fig.subplots()
ax.plot(times, x[:, 0], "k-", lw=1, label="true position")
ax.plot(times, y[:, 0], ".", color="tab:red", ms=3, label="observed y")
ax.set_xlabel("time")
ax.legend(loc="upper right", fontsize="small")
fig

# %% [markdown]
# ## EM: the posterior mode, from a wrong start
#
# `fit_em(model, y, times, objective="map")` runs generalized EM on the NumPyro model: each
# E-step is a Kalman smoother pass, each M-step maximises the expected complete-data
# log-likelihood plus the log-prior over the model's parameters. As in `sdessm demo`, we start
# every parameter at 0.7 times its true value.
#
# EM never lowers its objective. For MAP the objective is the log-posterior (log-likelihood plus
# log-prior); the log-likelihood alone need not rise at every step, so the check is on the
# log-posterior. `log_likelihoods[k]` is the exact marginal log-likelihood of iterate k, and the
# last entry belongs to the returned estimate: we recompute it with `sdessm.log_likelihood`.

# %%
start = {k: 0.7 * v for k, v in truth.items()}
em = sdessm.fit_em(osc.model, y, times, init=start, objective="map", progress=False)
print(f"{em.num_iters} iterations ({em.report['stopped']}), path: {em.report['path']}")
print(f"log-likelihood {em.log_likelihoods[0]:.3f} -> {em.log_likelihood:.3f}")
for k in truth:
    print(f"  {k:<6} start {start[k]:7.4f}   EM {float(em.params[k]):7.4f}   truth {truth[k]:7.4f}")

log_post = np.asarray(em.report["log_posteriors"])
steps = np.diff(log_post)
print(f"smallest log-posterior increment: {steps.min():.3g}")
assert em.converged
assert steps.min() >= -1e-9 * np.abs(log_post).max(), "EM lowered the log-posterior"
ll_direct = float(sdessm.log_likelihood(em.sde, y, times))
print(f"last history entry {em.log_likelihood:.10f}, log_likelihood(em.sde) {ll_direct:.10f}")
assert abs(ll_direct - em.log_likelihood) <= 1e-8 * abs(ll_direct)
plot_em_history(em)

# %% [markdown]
# ## Smoothed states
#
# The RTS smoother at the EM estimate gives $p(x_k \mid y_{1:T})$ at every observation time,
# for the observed position and for the velocity, which is never observed and is recovered
# through the dynamics alone. The bands are 95% intervals. If the model is right, about 95% of
# the true states lie inside them; the velocity band is wider than the position band because
# the data only see the velocity through the positions it produces.

# %%
smoothed = sdessm.rts_smoother(em.sde, y, times)
sd = np.sqrt(np.diagonal(np.asarray(smoothed.smoothed_covs), axis1=-2, axis2=-1))
inside = np.abs(x - np.asarray(smoothed.smoothed_means)) <= 1.96 * sd
print("fraction of true states inside the 95% band (position, velocity):", inside.mean(axis=0))
print("median band half-width (position, velocity):", np.median(1.96 * sd, axis=0))
assert np.all(inside.mean(axis=0) > 0.85)
plot_smoothed_states(times, smoothed, y, x, H=em.sde.H, state_names=["position", "velocity"])

# %% [markdown]
# ## NUTS: the posterior
#
# `fit_nuts` runs NumPyro's NUTS on the same model, with the states integrated out by the
# Kalman filter (the sampler only sees the four parameters). The chains start at the EM
# estimate. This run is deliberately small (2 chains, 300 warm-up and 300 kept draws each), so
# that the notebook runs quickly; `sdessm demo` uses 4 x (500 + 500).

# %%
idata = fit_nuts(
    osc.model,
    y,
    times,
    num_warmup=300,
    num_samples=300,
    num_chains=2,
    init=em,
    truth=truth,
    seed=0,
    progress=False,
)
diverging = int(np.asarray(idata["sample_stats"]["diverging"]).sum())
print(f"divergent transitions: {diverging}")

# %% [markdown]
# ## Recovery: truth vs EM vs posterior
#
# One row per parameter: the truth, the EM estimate (posterior mode), the posterior mean, sd
# and 94% highest-density interval, R-hat and effective sample sizes, and whether the truth and
# the EM estimate lie in the interval.

# %%
table = recovery_table(idata)
columns = ["truth", "em", "mean", "sd", "hdi_low", "hdi_high", "r_hat", "ess_bulk", "ess_tail"]
print(table[columns].to_string(float_format=lambda v: f"{v:.4g}"))
print()
print(table[["truth_in_hdi", "em_in_hdi"]].to_string())
z = (table["mean"] - table["truth"]) / table["sd"]
print("\n(posterior mean - truth) / posterior sd:", z.round(2).to_dict())
assert table["r_hat"].max() < 1.1, "the chains disagree"
assert np.all(np.abs(z) < 4), "the truth is far out in the posterior"

# %% [markdown]
# Reading the table:
#
# - **R-hat and ESS.** R-hat near 1 means the two chains agree; bulk ESS is the number of
#   independent draws the 600 correlated ones are worth. With this short run, ESS in the
#   hundreds is expected; for publication-quality intervals run more draws (and more chains).
# - **EM vs the posterior mean.** EM gives the *mode* of the posterior density of the named
#   parameters; the posterior mean differs from it where the posterior is skewed. That shows
#   most for the scale parameters `zeta` and `sigma`, which are positive and whose posteriors
#   have a right tail, so their means sit above their modes.
# - **The truth.** One data set of ten periods does not pin the parameters down: the
#   estimates differ from the truth by amounts comparable to the posterior sd. The honest
#   check is the one above: the truth lies within a few posterior sds, and it usually lies in
#   the 94% interval (in the long run, for 94% of data sets). The noise sd is the best
#   determined; the damping ratio `zeta` and the force noise `sigma`, which trade off against
#   each other in setting the amplitude of the oscillation, are the least.

# %% [markdown]
# ## Diagnostic plots
#
# Traces and rank histograms per chain: well-mixed chains look like stationary noise and have
# flat rank histograms (a chain stuck in one region shows as a sloped or humped histogram).
# With 300 draws per chain each bin holds about 15 draws, so the histograms are noisy: look for
# a systematic slope or hump, not for bin-to-bin differences.

# %%
plot_trace_rank(idata)

# %% [markdown]
# The forest plot: posterior mean and 94% interval per parameter (each on its own scale), with
# the truth (x) and the EM estimate (diamond).

# %%
plot_recovery(table)

# %% [markdown]
# ## Where next
#
# - `derivation.py` checks the mathematics behind these steps numerically.
# - `irregular_missing.py` fits irregularly sampled data with partly missing vectors.
# - On the command line, `sdessm demo` runs this whole workflow and writes a report.
