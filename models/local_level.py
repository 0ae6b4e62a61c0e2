"""Local level (random walk plus noise): dx = sigma dW (F = 0), y = x + e.

Parameters and units:

- sigma (y / sqrt(time)): how fast the level wanders; HalfNormal(spread / sqrt(step)) (the
  level moves by about spread or less in one step).
- noise (y): observation noise sd; HalfNormal(spread).
- level0 (y): the level at the first observation; Normal(level, 2.5 spread).

level and spread are the median and robust sd of y, step the median time step
(`sdessm.priors.data_scales`): the priors are in the data's own units.

Identified: sigma and noise (their ratio sets how much the smoother averages), and level0.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sdessm import priors
from sdessm.moments import differences, moments
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

TRUE_PARAMS = {"sigma": 0.3, "noise": 0.5, "level0": 0.0}


def to_sde(sigma, noise, level0):
    """The named parameters as `SDEParams`."""
    return SDEParams(
        F=jnp.zeros((1, 1)),
        L=sigma * jnp.eye(1),
        H=jnp.eye(1),
        u=jnp.zeros(1),
        R=noise**2 * jnp.eye(1),
        mu1=jnp.reshape(level0, (1,)),
        P1=1e-8 * jnp.eye(1),  # the first level is the sampled level0
    )


def start_from_data(times, y):
    """A start in the data's units: level0 the first observation; sigma and noise from the
    increments d of y, for which a random walk plus noise has var(d) = sigma^2 step + 2 noise^2
    and cov(d_k, d_(k+1)) = -noise^2."""
    m = moments(times, y, lags=0)
    d = moments(*differences(times, y), lags=1)
    v0, v1 = float(d.variance[0]), float(d.autocovariance[1, 0])
    noise2 = np.clip(-v1 if np.isfinite(v1) else 0.25 * v0, 0.01 * v0, 0.49 * v0)
    return {
        "sigma": np.sqrt((v0 - 2 * noise2) / m.step),
        "noise": np.sqrt(noise2),
        "level0": float(m.first[0]),
    }


def model(times, y=None, *, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales` (by default
    `sdessm.priors.data_scales(times, y)`), then `y` from `LTISDE` at `times`."""
    s = priors.data_scales(times, y) if scales is None else scales
    sigma = numpyro.sample("sigma", dist.HalfNormal(s.spread[0] / jnp.sqrt(s.step)))
    noise = numpyro.sample("noise", priors.scale(s))
    level0 = numpyro.sample("level0", priors.location(s))
    numpyro.sample("y", LTISDE(*to_sde(sigma, noise, level0), times=times), obs=y)
