"""Damped harmonic oscillator driven by white noise, position observed: x = (position, velocity).

dx = [[0, 1], [-omega^2, -2 zeta omega]] x dt + [0, sigma]^T dW,  y = position + u + e.

Parameters and units:

- omega (radians / time): undamped angular frequency; `sdessm.priors.frequency`: LogNormal with
  95% of its mass between 2 pi / span of the record and the Nyquist frequency pi / step.
- zeta (dimensionless): damping ratio, < 1 for oscillation; Beta(2, 8) (mean 0.2).
- sigma (y / time^1.5): force noise; given omega and zeta, HalfNormal(2 spread
  sqrt(4 zeta omega^3)), i.e. the stationary position sd ~ HalfNormal(2 spread).
- u (y): the rest position, the mean of y; Normal(level, 2.5 spread).
- noise (y): observation noise sd; HalfNormal(spread).

level and spread are the median and robust sd of y (`sdessm.priors.data_scales`): the priors are
in the data's own units, so a fit reads the same in any units of y and of time.

The initial state is stationary: position variance sigma^2 / (4 zeta omega^3), velocity variance
sigma^2 / (4 zeta omega), uncorrelated.
Identified from position data: omega, zeta, sigma, u and noise (the velocity is latent; the
unconstrained 2-D model is identified only up to a change of state coordinates).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sdessm import priors
from sdessm.moments import moments, spectral_peaks
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

TRUE_PARAMS = {"omega": 2.0, "zeta": 0.1, "sigma": 0.6, "u": 0.0, "noise": 0.15}


def to_sde(omega, zeta, sigma, noise, u=0.0):
    """The named parameters as `SDEParams`."""
    return SDEParams(
        F=jnp.array([[0.0, 1.0], [-(omega**2), -2.0 * zeta * omega]]),
        L=jnp.stack([jnp.zeros(1), jnp.reshape(sigma, (1,))]),
        H=jnp.array([[1.0, 0.0]]),
        u=jnp.reshape(jnp.asarray(u), (1,)),
        R=noise**2 * jnp.eye(1),
        mu1=jnp.zeros(2),
        P1=jnp.diag(jnp.stack([sigma**2 / (4 * zeta * omega**3), sigma**2 / (4 * zeta * omega)])),
    )


def start_from_data(times, y):
    """A start in the data's units: omega at the highest peak of the periodogram, zeta = 0.1,
    u the mean, noise with a tenth of the variance and sigma from the rest (position variance
    sigma^2 / (4 zeta omega^3))."""
    m = moments(times, y, lags=0)
    g0 = float(m.variance[0])
    omega, zeta = float(spectral_peaks(times, y, 1)[0]), 0.1
    return {
        "omega": omega,
        "zeta": zeta,
        "sigma": np.sqrt(4 * zeta * omega**3 * 0.9 * g0),
        "u": float(m.mean[0]),
        "noise": np.sqrt(0.1 * g0),
    }


def model(times, y=None, *, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales` (by default
    `sdessm.priors.data_scales(times, y)`), then `y` from `LTISDE` at `times`."""
    s = priors.data_scales(times, y) if scales is None else scales
    omega = numpyro.sample("omega", priors.frequency(s))
    zeta = numpyro.sample("zeta", dist.Beta(2.0, 8.0))
    amplitude = jnp.sqrt(4.0 * zeta * omega**3)  # sigma / the stationary position sd
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0 * s.spread[0] * amplitude))
    u = numpyro.sample("u", priors.location(s))
    noise = numpyro.sample("noise", priors.scale(s))
    numpyro.sample("y", LTISDE(*to_sde(omega, zeta, sigma, noise, u), times=times), obs=y)
