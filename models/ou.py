"""Scalar Ornstein-Uhlenbeck process with noise: dx = -theta x dt + sigma dW, y = x + u + e.

Parameters and units (time in the units of `times`, y in its own units):

- theta (1/time): mean-reversion rate; `sdessm.priors.rate`: LogNormal with 95% of its mass
  between 1/span and 1/step of the record.
- sigma (y / sqrt(time)): diffusion; given theta, HalfNormal(2 spread sqrt(2 theta)), i.e. the
  stationary sd sigma / sqrt(2 theta) ~ HalfNormal(2 spread).
- u (y): the long-run mean; Normal(level, 2.5 spread).
- noise (y): observation noise sd; HalfNormal(spread).

level and spread are the median and robust sd of y (`sdessm.priors.data_scales`): the priors are
in the data's own units, so a fit reads the same in any units of y and of time.

The initial state is drawn from the stationary law N(0, sigma^2 / (2 theta)).
Identified: all four, given a record long against 1/theta and steps not much longer than 1/theta
(with steps >> 1/theta only sigma^2 / (2 theta) + noise^2 is identified).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sdessm import priors
from sdessm.moments import moments
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

TRUE_PARAMS = {"theta": 0.5, "sigma": 0.8, "u": 1.0, "noise": 0.2}


def to_sde(theta, sigma, u, noise):
    """The named parameters as `SDEParams`."""
    return SDEParams(
        F=-theta * jnp.eye(1),
        L=sigma * jnp.eye(1),
        H=jnp.eye(1),
        u=jnp.reshape(u, (1,)),
        R=noise**2 * jnp.eye(1),
        mu1=jnp.zeros(1),
        P1=sigma**2 / (2 * theta) * jnp.eye(1),
    )


def start_from_data(times, y):
    """A start in the data's units, from the autocovariances g_k of y at k steps: an OU process
    plus noise has g_2 / g_1 = exp(-theta step) and g_1 = exp(-theta step) sigma^2 / (2 theta)."""
    m = moments(times, y)
    g0, g1, g2 = (float(g) for g in m.autocovariance[:, 0])
    rho = np.clip(g2 / g1 if g1 > 0 and g2 > 0 else 0.1, 0.05, 0.98)
    variance = np.clip(g1 / rho if g1 > 0 else 0.5 * g0, 0.1 * g0, 0.95 * g0)
    theta = -np.log(rho) / m.step
    return {
        "theta": theta,
        "sigma": np.sqrt(2 * theta * variance),
        "u": float(m.mean[0]),
        "noise": np.sqrt(g0 - variance),
    }


def model(times, y=None, *, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales` (by default
    `sdessm.priors.data_scales(times, y)`), then `y` from `LTISDE` at `times`."""
    s = priors.data_scales(times, y) if scales is None else scales
    theta = numpyro.sample("theta", priors.rate(s))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0 * s.spread[0] * jnp.sqrt(2.0 * theta)))
    u = numpyro.sample("u", priors.location(s))
    noise = numpyro.sample("noise", priors.scale(s))
    numpyro.sample("y", LTISDE(*to_sde(theta, sigma, u, noise), times=times), obs=y)
