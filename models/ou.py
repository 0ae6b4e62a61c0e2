"""Scalar Ornstein-Uhlenbeck process with noise: dx = -theta x dt + sigma dW, y = x + u + e.

Parameters and units (time in the units of `times`, y in its own units):

- theta (1/time): mean-reversion rate; LogNormal(log 0.5, 1) puts the correlation time 1/theta
  between about 0.3 and 15 time units.
- sigma (y / sqrt(time)): diffusion; HalfNormal(2).
- u (y): the long-run mean; Normal(0, 10).
- noise (y): observation noise sd; HalfNormal(1).

The initial state is drawn from the stationary law N(0, sigma^2 / (2 theta)).
Identified: all four, given a record long against 1/theta and steps not much longer than 1/theta
(with steps >> 1/theta only sigma^2 / (2 theta) + noise^2 is identified).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

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


def model(times, y=None):
    """NumPyro model: priors on the named parameters, then `y` from `LTISDE` at `times`."""
    theta = numpyro.sample("theta", dist.LogNormal(jnp.log(0.5), 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    u = numpyro.sample("u", dist.Normal(0.0, 10.0))
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    numpyro.sample("y", LTISDE(*to_sde(theta, sigma, u, noise), times=times), obs=y)
