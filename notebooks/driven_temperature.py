# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A known input: the sun heating the air
#
# The hourly air temperature at Greensboro, North Carolina, in July 1981 ships with sdessm,
# together with the solar irradiance measured at the same hours (`sdessm.datasets`, from the
# National Solar Radiation Database as redistributed with pvlib python; see
# `sdessm.datasets.info("greensboro_july")`). The irradiance is a measured forcing: known, not
# modelled. The simplest physical model of the air near the ground is a lumped heat balance,
# the air temperature relaxing at a rate $\theta$ towards a background level while the sun
# heats it at a rate proportional to the irradiance $G(t)$, with everything else (wind, clouds
# not in $G$, advection) as noise:
#
# $$dx = (-\theta x + b\,G(t))\,dt + \sigma\,dW, \qquad T_k = x(t_k) + u + d\,G_k + e_k .$$
#
# That is the zoo's `driven_ou` model with one input. Its parameters read physically: $1/\theta$
# is the time constant of the air's thermal response (hours), $b/\theta$ the equilibrium warming
# per W/m$^2$ of sunshine, $u$ the temperature the air tends to without sun, and $d$ an
# immediate part of the response. It is compared with the same process without the input (the
# zoo's `ou` model), the baseline that treats the daily cycle as noise.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np
from sdessm.models import load

import sdessm
from sdessm import datasets

jax.config.update("jax_enable_x64", True)
print(datasets.info("greensboro_july")["source"])

df = datasets.load("greensboro_july")
hours = df["hour"].to_numpy(dtype=float)
temperature = df[["temperature"]].to_numpy(dtype=float)  # (T, 1): the data
sun = df[["ghi"]].to_numpy(dtype=float) / 100.0  # (T, 1): the input, in 100 W/m^2
print(f"{len(hours)} hours; temperature {temperature.min():.1f} to {temperature.max():.1f} C")

fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True)
week = hours <= 24 * 7
ax1.plot(hours[week] / 24, temperature[week, 0], ".-", ms=3)
ax1.set_ylabel("air temperature (C)")
ax2.plot(hours[week] / 24, 100 * sun[week, 0], color="tab:orange")
ax2.set_ylabel("irradiance (W/m$^2$)")
ax2.set_xlabel("days since 1 July 1981, 00:00 local standard time")
fig.tight_layout()

# %% [markdown]
# ## The fits
#
# Both models are fitted by EM from their default starts (a least-squares ARX(1) fit for the
# driven model, see `driven_ou.start_from_data`), on the first 30 days; the 31st is kept to
# check a forecast. The inputs go in as `model_kwargs={"inputs": sun}`, exactly what
# `sdessm fit greensboro_july.csv --model driven_ou --inputs ghi` does on the command line.

# %%
fit_days = hours <= 24 * 30
t_fit, y_fit, v_fit = hours[fit_days], temperature[fit_days], sun[fit_days]
driven, baseline = load("driven_ou"), load("ou")

em = sdessm.fit_em(driven.model, y_fit, t_fit, model_kwargs={"inputs": v_fit}, progress=False)
em0 = sdessm.fit_em(baseline.model, y_fit, t_fit, progress=False)
se = em.standard_errors()
for name in ("theta", "sigma", "b", "d", "u", "noise"):
    value, error = (float(np.ravel(a[name])[0]) for a in (em.params, se))
    print(f"{name:>6} {value:9.4f}  se {error:.4f}")
print("stopped:", em.report["stopped"], "| certified:", em.converged)
print("boundary:", em.report.get("boundary"))

# %% [markdown]
# The observation noise sits at its boundary, zero: the temperatures are recorded to 0.1 C, so
# the only measurement error is rounding (sd 0.03 C), far below the hour-to-hour noise of the
# air itself, and the data cannot tell the two apart. The fit says so rather than calling it
# converged; every other parameter is well inside its range, with the standard errors above.
#
# ## What the data say about the physics

# %%
theta, b, d = float(em.params["theta"]), float(em.params["b"][0]), float(em.params["d"][0])
print(f"time constant 1/theta: {1 / theta:.1f} hours (se {float(se['theta']) / theta**2:.1f})")
print(f"equilibrium warming per 100 W/m^2: {b / theta:.2f} C; immediate part d: {d:.2f} C")
print(
    f"a clear noon (900 W/m^2) held: +{9 * (b / theta + d):.1f} C over the night-time level "
    f"u = {float(em.params['u']):.1f} C"
)

# %% [markdown]
# A time constant of several hours is what a lumped heat balance of the boundary layer gives,
# and it is why the day's maximum comes in mid-afternoon, hours after the sun's peak. The
# equilibrium warming of a clear noon, held, would be about twice the observed daily range:
# the sun sets long before the air gets there.
#
# ## Against the baseline without the input

# %%
crit, crit0 = em.information_criteria(), em0.information_criteria()
print(f"log-likelihood: driven {em.log_likelihood:.1f}, baseline {em0.log_likelihood:.1f}")
print(f"BIC: driven {crit['bic']:.1f}, baseline {crit0['bic']:.1f}")


def acf(fit, **kwargs):
    w = np.asarray(sdessm.innovations(fit.sde, y_fit, t_fit, **kwargs).standardized)[:, 0]
    return {lag: float(np.corrcoef(w[:-lag], w[lag:])[0, 1]) for lag in (1, 2, 24)}


r, r0 = acf(em, inputs=v_fit), acf(em0)
print("autocorrelation of the one-step errors at lags 1, 2, 24 hours")
print("  driven  ", {k: round(v, 3) for k, v in r.items()})
print("  baseline", {k: round(v, 3) for k, v in r0.items()})
assert crit["bic"] < crit0["bic"] - 100  # the input explains what the baseline calls noise
assert abs(r[1]) < 0.1 < r0[1] and abs(r[24]) < r0[24]
assert 2 < 1 / theta < 24 and b > 5 * float(se["b"][0])

# %% [markdown]
# Without the input, the one-step errors keep the daily cycle (a correlation near 0.5 at
# 24 hours); with it, little is left. The remaining lag-2 correlation is what a first-order
# heat balance cannot capture (the ground stores heat too: a second state would).
#
# ## Forecasting the 31st with its sunshine
#
# A forecast of a driven model needs the future inputs: here the irradiance measured on the
# 31st (`future_inputs`), as a weather forecast would supply it.

# %%
future = ~fit_days
fc = sdessm.forecast(em.sde, y_fit, t_fit, hours[future], inputs=v_fit, future_inputs=sun[future])
mean = np.asarray(fc.obs_means)[:, 0]
sd = np.sqrt(np.asarray(fc.obs_covs)[:, 0, 0])
actual = temperature[future, 0]
inside = np.mean(np.abs(actual - mean) <= 1.96 * sd)
print(
    f"RMSE {np.sqrt(np.mean((actual - mean) ** 2)):.2f} C; {inside:.0%} of the 24 hours "
    "inside the 95% band"
)

fig, ax = plt.subplots(figsize=(10, 3))
past = hours > 24 * 27
ax.plot(hours[past & fit_days] / 24, temperature[past & fit_days, 0], ".", ms=4, label="data")
ax.plot(hours[future] / 24, actual, ".", color="tab:red", ms=4, label="the 31st (not fitted)")
ax.plot(hours[future] / 24, mean, label="forecast with the 31st's sunshine")
ax.fill_between(hours[future] / 24, mean - 1.96 * sd, mean + 1.96 * sd, alpha=0.3)
ax.set_xlabel("days since 1 July 1981, 00:00 local standard time")
ax.set_ylabel("air temperature (C)")
ax.legend(fontsize="small")
fig.tight_layout()
assert inside >= 0.75

# %% [markdown]
# The forecast rises with the day's sunshine and peaks in the afternoon, as the air did, but it
# cools too slowly in the evening: one time constant for heating by day and cooling by night is
# the first-order model's limit (the clear-sky night cools by radiation, faster than the
# daytime exchange). Hours outside the band say what to add next: a second state for the ground,
# or a night-time input such as the cloud cover.
