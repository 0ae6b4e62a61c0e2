r"""Weakly informative priors in the data's own units, for the zoo's models and for yours.

A prior written for standardised data (a noise sd $\sim$ HalfNormal(1), a level $\sim$
Normal(0, 10), a rate $\sim$ LogNormal(0, 1) per unit of time) dominates the posterior of a river
flow near 1000 or of CO2 near 350 ppm, and says something different when the same times are
written in weeks rather than years. The zoo's priors instead take their scales from the data,
as brms does by default (Buerkner 2017, *J. Stat. Softw.* 80(1): an intercept
$\sim t_3(\mathrm{median}(y), \mathrm{mad}(y))$, scales $\sim$ half-$t_3(0, \mathrm{mad}(y))$)
and rstanarm's `autoscale`:

- **y's location and spread** (`DataScales.level`, `DataScales.spread`): the median and the
  median absolute deviation (times 1.4826, the standard deviation of a normal law) of each
  column's observed values; the standard deviation where the MAD is 0, 1 where both are.
- **the time scale** (`DataScales.step`, `DataScales.span`): the median step between
  observations and the length of the record. The data can resolve rates (1/time) between
  1/span and 1/step and angular frequencies between $2\pi$/span and $\pi$/step (the Nyquist
  frequency), so `rate` and `frequency` put about 95% of their mass there.

Every prior built from these scales is equivariant: for data $a + b\,y$ (b > 0) at times
$c\,t$, each prior is the old one mapped into the new units, so the posterior is the old
posterior in the new units and a fit reads the same whatever units the data arrive in. The price
is the usual one of such defaults: the prior depends on the data it is then confronted with,
weakly (only through a location and two scales).

Without data (`y=None`: prior predictive draws, simulation) the location is 0 and the spread 1;
the times always set the time scale.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: the MAD of a normal law times this is its standard deviation
MAD_TO_SD = 1.482602218505602


class DataScales(NamedTuple):
    """The location, spread and time scales of a data set (see the module docstring).

    Attributes:
        level: `(p,)` median of each column's observed values (0 without data).
        spread: `(p,)` their robust standard deviation (1 without data).
        step: the median time step.
        span: the length of the record (the longest sequence's last time minus its first).
    """

    level: jax.Array
    spread: jax.Array
    step: jax.Array
    span: jax.Array


def data_scales(times, y=None, obs_dim: int = 1) -> DataScales:
    """The `DataScales` of observations `y` `(T, p)` or `(B, T, p)` (NaN = missing) at `times`
    `(T,)` or `(B, T)`; with `y=None`, level 0 and spread 1 for `obs_dim` columns. Traceable:
    computed by NumPy when the inputs are concrete (constants in a compiled model), by JAX when
    they are traced.

    Examples:
        >>> import numpy as np
        >>> s = data_scales(np.arange(5.0) * 7, np.array([[1.0], [2.0], [np.nan], [4.0], [9.0]]))
        >>> float(s.level[0]), round(float(s.spread[0]), 4), float(s.step), float(s.span)
        (3.0, 2.2239, 7.0, 28.0)
    """
    traced = any(isinstance(a, jax.core.Tracer) for a in (times, y))
    xp = jnp if traced else np
    t = xp.asarray(times, dtype=float)
    t = t.reshape((-1, t.shape[-1])) if t.ndim else t.reshape(1, 1)
    steps = xp.diff(t, axis=-1)
    step = xp.median(steps) if steps.size else xp.asarray(1.0)
    span = xp.max(t[:, -1] - t[:, 0]) if t.shape[-1] > 1 else xp.asarray(1.0)
    if y is None:
        return DataScales(xp.zeros(obs_dim), xp.ones(obs_dim), step, span)
    y = xp.asarray(y, dtype=float)
    flat = y.reshape((-1, y.shape[-1]))
    level = xp.nanmedian(flat, axis=0)
    mad = MAD_TO_SD * xp.nanmedian(xp.abs(flat - level[None, :]), axis=0)
    sd = xp.nanstd(flat, axis=0)
    spread = xp.where(mad > 0, mad, xp.where(sd > 0, sd, 1.0))
    level = xp.where(xp.isfinite(level), level, 0.0)  # a column never observed
    spread = xp.where(xp.isfinite(spread), spread, 1.0)
    return DataScales(level, spread, step, span)


def _log_normal_between(low, high):
    """LogNormal with median sqrt(low high) and about 95% of its mass in [low, high] (a width of
    at least 0.5 in log units, a factor of e either way, when the range is narrow)."""
    import numpyro.distributions as dist

    width = jnp.maximum(jnp.log(high / low) / 4.0, 0.5)
    return dist.LogNormal(0.5 * jnp.log(low * high), width)


def rate(s: DataScales):
    """A prior for a rate (1/time: a mean reversion, a decay): LogNormal between 1/span and
    1/step."""
    return _log_normal_between(1.0 / s.span, 1.0 / s.step)


def frequency(s: DataScales):
    """A prior for an angular frequency (radians/time): LogNormal between 2 pi/span and the
    Nyquist frequency pi/step."""
    return _log_normal_between(2.0 * jnp.pi / s.span, jnp.pi / s.step)


def location(s: DataScales, column: int = 0, width: float = 2.5):
    """A prior for a level or offset of y's `column` (y's units): Normal(level, width spread)."""
    import numpyro.distributions as dist

    return dist.Normal(s.level[column], width * s.spread[column])


def scale(s: DataScales, column: int = 0, width: float = 1.0):
    """A prior for a standard deviation in y's units (an observation noise, a stationary
    amplitude): HalfNormal(width spread)."""
    import numpyro.distributions as dist

    return dist.HalfNormal(width * s.spread[column])
