"""Local level (random walk plus noise): dx = sigma dW (F = 0), y = x + e.

Parameters and units:

- sigma (y / sqrt(time)): how fast the level wanders; HalfNormal(1).
- noise (y): observation noise sd; HalfNormal(1).
- level0 (y): the level at the first observation; Normal(0, 10) (diffuse against typical data;
  rescale y first if it is far from 0).

Identified: sigma and noise (their ratio sets how much the smoother averages), and level0.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

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


def model(times, y=None):
    """NumPyro model: priors on the named parameters, then `y` from `LTISDE` at `times`."""
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    level0 = numpyro.sample("level0", dist.Normal(0.0, 10.0))
    numpyro.sample("y", LTISDE(*to_sde(sigma, noise, level0), times=times), obs=y)
