r"""Local linear trend plus a stochastic seasonal cycle plus noise: y = level + cycle + e.

The state is x = (level, slope, c_1, s_1, ..., c_h, s_h), h = `HARMONICS`:

- the trend integrates a wandering slope: d level = slope dt + sigma_level dW, d slope =
  sigma_slope dW (sigma_slope = 0 and sigma_level = 0: a straight line);
- harmonic j of the cycle rotates at j omega and forgets its phase and amplitude at the rate
  lam: d(c_j, s_j) = [[-lam, -j omega], [j omega, -lam]] (c_j, s_j) dt + sigma_j dW (2-D), so
  that c_j is a cycle of period 2 pi / (j omega) whose amplitude and shape drift over 1 / lam;
- y = level + c_1 + ... + c_h + e, e ~ N(0, noise^2).

This is the continuous-time form of the basic structural model (Harvey 1989, *Forecasting,
Structural Time Series Models and the Kalman Filter*, ch. 2; its trigonometric seasonal), for
series such as atmospheric CO2: a trend, a yearly cycle that is not a sinusoid (two harmonics),
and measurement noise. The period is a parameter (omega), not a constant: the model reads the
same with time in years, months or weeks.

Parameters and units (time in the units of `times`, y in its own units):

- level0 (y), slope0 (y / time): the trend at the first observation; Normal(level, 2.5 spread)
  and Normal(0, 4 spread / span) (a straight line across the record moves y by about 3.5
  spreads).
- sigma_level (y / sqrt(time)): HalfNormal(spread / sqrt(step)).
- sigma_slope (y / time^1.5): HalfNormal(2 spread / span^1.5) (the slope's wandering moves the
  level by about spread over the record).
- omega (radians / time): the fundamental angular frequency; `sdessm.priors.frequency`.
- lam (1 / time): the rate at which the cycle forgets its shape; `sdessm.priors.rate`.
- sigma (y / sqrt(time)), shape (h,): the diffusion of each harmonic; given lam,
  HalfNormal(2 spread sqrt(2 lam)) (the stationary sd of each coordinate, sigma_j / sqrt(2 lam),
  ~ HalfNormal(2 spread)).
- noise (y): observation noise sd; HalfNormal(spread).

level, spread, step and span are `sdessm.priors.data_scales` (the median and robust sd of y, the
median step and the length of the record): the priors are in the data's own units.

The initial state: the trend at (level0, slope0) (variance 1e-8, as in `local_level`), the cycle
from its stationary law N(0, sigma_j^2 / (2 lam) I).
Identified: all, given a record of several periods and steps shorter than half the shortest
period 2 pi / (h omega) (beyond it the harmonic is aliased). With a slowly wandering trend the
data may not tell sigma_level from noise (either can sit at 0: a boundary, reported as such).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sdessm import priors
from sdessm.moments import spectral_peaks
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

HARMONICS = 2

TRUE_PARAMS = {
    "level0": 315.0,
    "slope0": 1.3,
    "sigma_level": 0.1,
    "sigma_slope": 0.05,
    "omega": 2.0 * np.pi,
    "lam": 0.2,
    "sigma": [1.3, 0.5],
    "noise": 0.2,
}


def to_sde(level0, slope0, sigma_level, sigma_slope, omega, lam, sigma, noise):
    """The named parameters as `SDEParams`; h = len(sigma)."""
    sigma = jnp.atleast_1d(jnp.asarray(sigma, dtype=float))
    h = sigma.shape[0]
    omega, lam = jnp.asarray(omega, dtype=float), jnp.asarray(lam, dtype=float)
    d = 2 + 2 * h
    trend = jnp.array([[0.0, 1.0], [0.0, 0.0]])
    F = jnp.zeros((d, d)).at[:2, :2].set(trend)
    L = jnp.zeros((d, d)).at[0, 0].set(sigma_level).at[1, 1].set(sigma_slope)
    P1 = jnp.zeros((d, d)).at[0, 0].set(1e-8).at[1, 1].set(1e-8)
    for j in range(h):
        i = 2 + 2 * j
        rotation = jnp.array([[0.0, -1.0], [1.0, 0.0]]) * (j + 1) * omega
        F = F.at[i : i + 2, i : i + 2].set(rotation - lam * jnp.eye(2))
        L = L.at[i : i + 2, i : i + 2].set(sigma[j] * jnp.eye(2))
        P1 = P1.at[i : i + 2, i : i + 2].set(sigma[j] ** 2 / (2.0 * lam) * jnp.eye(2))
    H = jnp.zeros((1, d)).at[0, 0].set(1.0).at[0, 2::2].set(1.0)
    return SDEParams(
        F=F,
        L=L,
        H=H,
        u=jnp.zeros(1),
        R=jnp.reshape(jnp.asarray(noise, dtype=float) ** 2, (1, 1)),
        mu1=jnp.zeros(d).at[0].set(level0).at[1].set(slope0),
        P1=P1,
    )


def start_from_data(times, y, *, harmonics=HARMONICS):
    """A start in the data's units: omega at the highest peak of the periodogram of y less its
    least-squares line; then the least-squares fit of a line and `harmonics` harmonics of omega
    gives level0, slope0 and each harmonic's amplitude; lam = 4 / span (the shape drifts a
    little over the record); of the residual variance, half is noise and a quarter each drives
    the level (over one step) and, much more slowly, the slope."""
    t = np.asarray(times, dtype=float)
    v = np.asarray(y, dtype=float)
    if v.ndim != 2 or t.ndim != 1:
        raise ValueError("start_from_data takes one sequence: y (T, 1) at times (T,).")
    keep = np.isfinite(v[:, 0])
    tk, vk = t[keep] - t[0], v[keep, 0]
    line = np.polynomial.polynomial.polyfit(tk, vk, 1)
    detrended = np.full(v.shape, np.nan)
    detrended[keep, 0] = vk - np.polynomial.polynomial.polyval(tk, line)
    omega = float(spectral_peaks(t, detrended, 1)[0])
    columns = [np.ones_like(tk), tk]
    for j in range(1, int(harmonics) + 1):
        columns += [np.cos(j * omega * tk), np.sin(j * omega * tk)]
    design = np.stack(columns, axis=1)
    coef, *_ = np.linalg.lstsq(design, vk, rcond=None)
    residual = float(np.var(vk - design @ coef))
    span = float(t[-1] - t[0])
    step = float(np.median(np.diff(t)))
    lam = 4.0 / span
    amplitude2 = coef[2::2] ** 2 + coef[3::2] ** 2  # c_j^2 + s_j^2 = 2 x the stationary variance
    return {
        "level0": float(coef[0]),
        "slope0": float(coef[1]),
        "sigma_level": np.sqrt(0.25 * residual / step),
        "sigma_slope": np.sqrt(0.25 * residual / step) / span,
        "omega": omega,
        "lam": lam,
        "sigma": np.sqrt(lam * amplitude2),
        "noise": np.sqrt(0.5 * residual),
    }


def model(times, y=None, *, harmonics=HARMONICS, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales`, then `y` from
    `LTISDE` at `times`.

    Args:
        times (ArrayLike): observation times `(T,)`.
        y (ArrayLike | None): observations `(T, 1)` (or `(B, T, 1)`), NaN = missing; None to
            simulate.
        harmonics (int): h >= 1, the harmonics of omega in the cycle.
        scales (DataScales | None): the location, spread and time scales of the priors
            (`sdessm.priors.DataScales`); by default `sdessm.priors.data_scales(times, y)`.
    """
    h = int(harmonics)
    if h < 1:
        raise ValueError(f"`harmonics` must be >= 1; got {harmonics}.")
    s = priors.data_scales(times, y) if scales is None else scales
    spread = s.spread[0]
    level0 = numpyro.sample("level0", priors.location(s))
    slope0 = numpyro.sample("slope0", dist.Normal(0.0, 4.0 * spread / s.span))
    sigma_level = numpyro.sample("sigma_level", dist.HalfNormal(spread / jnp.sqrt(s.step)))
    sigma_slope = numpyro.sample("sigma_slope", dist.HalfNormal(2.0 * spread / s.span**1.5))
    omega = numpyro.sample("omega", priors.frequency(s))
    lam = numpyro.sample("lam", priors.rate(s))
    scale = jnp.full(h, 2.0 * spread * jnp.sqrt(2.0 * lam))
    sigma = numpyro.sample("sigma", dist.HalfNormal(scale).to_event(1))
    noise = numpyro.sample("noise", priors.scale(s))
    params = to_sde(level0, slope0, sigma_level, sigma_slope, omega, lam, sigma, noise)
    numpyro.sample("y", LTISDE(*params, times=times), obs=y)
