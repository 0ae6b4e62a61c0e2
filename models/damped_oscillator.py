"""Damped harmonic oscillator driven by white noise, position observed: x = (position, velocity).

dx = [[0, 1], [-omega^2, -2 zeta omega]] x dt + [0, sigma]^T dW,  y = position + e.

Parameters and units:

- omega (radians / time): undamped angular frequency; LogNormal(log 2, 0.7).
- zeta (dimensionless): damping ratio, < 1 for oscillation; Beta(2, 8) (mean 0.2).
- sigma (position / time^1.5): force noise; HalfNormal(2).
- noise (position): observation noise sd; HalfNormal(0.5).

The initial state is stationary: position variance sigma^2 / (4 zeta omega^3), velocity variance
sigma^2 / (4 zeta omega), uncorrelated.
Identified from position data: omega, zeta, sigma and noise (the velocity is latent; the
unconstrained 2-D model is identified only up to a change of state coordinates).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sdessm.moments import moments, spectral_peaks
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

TRUE_PARAMS = {"omega": 2.0, "zeta": 0.1, "sigma": 0.6, "noise": 0.15}


def to_sde(omega, zeta, sigma, noise):
    """The named parameters as `SDEParams`."""
    return SDEParams(
        F=jnp.array([[0.0, 1.0], [-(omega**2), -2.0 * zeta * omega]]),
        L=jnp.stack([jnp.zeros(1), jnp.reshape(sigma, (1,))]),
        H=jnp.array([[1.0, 0.0]]),
        u=jnp.zeros(1),
        R=noise**2 * jnp.eye(1),
        mu1=jnp.zeros(2),
        P1=jnp.diag(jnp.stack([sigma**2 / (4 * zeta * omega**3), sigma**2 / (4 * zeta * omega)])),
    )


def start_from_data(times, y):
    """A start in the data's units: omega at the highest peak of the periodogram, zeta = 0.1,
    noise with a tenth of the variance and sigma from the rest (position variance
    sigma^2 / (4 zeta omega^3))."""
    g0 = float(moments(times, y, lags=0).variance[0])
    omega, zeta = float(spectral_peaks(times, y, 1)[0]), 0.1
    return {
        "omega": omega,
        "zeta": zeta,
        "sigma": np.sqrt(4 * zeta * omega**3 * 0.9 * g0),
        "noise": np.sqrt(0.1 * g0),
    }


def model(times, y=None):
    """NumPyro model: priors on the named parameters, then `y` from `LTISDE` at `times`."""
    omega = numpyro.sample("omega", dist.LogNormal(jnp.log(2.0), 0.7))
    zeta = numpyro.sample("zeta", dist.Beta(2.0, 8.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    noise = numpyro.sample("noise", dist.HalfNormal(0.5))
    numpyro.sample("y", LTISDE(*to_sde(omega, zeta, sigma, noise), times=times), obs=y)
