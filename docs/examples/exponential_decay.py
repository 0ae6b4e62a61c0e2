"""Indoor CO2 relaxing to the outdoor level after a room empties: exponential decay with noise.

Time in minutes, concentrations in ppm. The state x is the excess of the room's CO2 over the
outdoor level; ventilation removes it at the rate 1/tau, and the mixing of the air makes it
fluctuate:

    dx = -x / tau dt + sigma dW,    y = outdoor + x + e,    e ~ N(0, noise^2).

Parameters and units, with priors on the scale of the data (a series that starts near 1300 ppm
and falls by a few tens of ppm per 2-minute step):

- tau (minutes): relaxation time (air-exchange time); LogNormal(log 60, 1), between about 8 and
  430 minutes.
- outdoor (ppm): the level the room relaxes to; Normal(420, 50).
- excess0 (ppm): the excess at the first observation; HalfNormal(1000).
- sigma (ppm / sqrt(minute)): fluctuation of the excess; HalfNormal(10).
- noise (ppm): sensor noise sd; HalfNormal(30).

The excess at the first observation is N(excess0, sigma^2 tau / 2): its mean plus the stationary
spread of the fluctuations. Identified: all five, given a record a few times tau long.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

# Optional: only `sdessm simulate` and `sdessm demo` need TRUE_PARAMS and to_sde.
TRUE_PARAMS = {"tau": 45.0, "outdoor": 420.0, "excess0": 900.0, "sigma": 6.0, "noise": 15.0}


def to_sde(tau, outdoor, excess0, sigma, noise):
    """The named parameters as `SDEParams`."""
    return SDEParams(
        F=-jnp.reshape(1.0 / tau, (1, 1)),  # drift (1 / minute)
        L=jnp.reshape(sigma, (1, 1)),  # diffusion (ppm / sqrt(minute))
        H=jnp.ones((1, 1)),  # the sensor reads the excess ...
        u=jnp.reshape(outdoor, (1,)),  # ... on top of the outdoor level (ppm)
        R=jnp.reshape(noise**2, (1, 1)),  # sensor noise variance (ppm^2)
        mu1=jnp.reshape(excess0, (1,)),  # mean excess at the first observation (ppm)
        P1=jnp.reshape(sigma**2 * tau / 2.0, (1, 1)),  # its variance (ppm^2)
    )


def model(times, y=None):
    """NumPyro model: priors in the data's units, then `y` `(T, 1)` from `LTISDE` at `times`."""
    tau = numpyro.sample("tau", dist.LogNormal(jnp.log(60.0), 1.0))
    outdoor = numpyro.sample("outdoor", dist.Normal(420.0, 50.0))
    excess0 = numpyro.sample("excess0", dist.HalfNormal(1000.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    noise = numpyro.sample("noise", dist.HalfNormal(30.0))
    numpyro.sample("y", LTISDE(*to_sde(tau, outdoor, excess0, sigma, noise), times=times), obs=y)
