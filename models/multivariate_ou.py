"""Two-dimensional Ornstein-Uhlenbeck process with a full drift, both coordinates observed (H = I).

dx = F x dt + L dW, y = x + e, with F = [[-a1, b12], [b21, -a2]] and L lower-triangular.

Parameters and units (time in the units of `times`):

- a1, a2 (1/time): self-relaxation rates; `sdessm.priors.rate` (LogNormal with 95% of its mass
  between 1 / span and 1 / step of the record).
- b12, b21 (1/time, times y1 / y2 or y2 / y1): couplings; Normal(0, r spread_i / spread_j) with
  r = 1 / sqrt(step span), the middle of the resolvable rates. The prior does not force
  stability: the posterior does, through the data.
- L_diag (y / sqrt(time)): diagonal of L; given a_i, HalfNormal(2 spread_i sqrt(2 a_i)) (the
  uncoupled stationary sd ~ HalfNormal(2 spread_i)). L_off (y2 / sqrt(time)): Normal(0,
  2 spread_2 sqrt(2 a_2)).
- noise (y): observation noise sd, shared by both coordinates; HalfNormal(mean spread).

spread_i is the robust sd of column i (`sdessm.priors.data_scales`). The model has no offset:
it is for series centred at 0 (subtract the means first). The initial state is N(0, diag(Q_ii /
(2 a_i))), the stationary variances of the uncoupled coordinates.
Identified: F, Q = L L^T and the noise (H = I fixes the frame).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sdessm import priors
from sdessm.moments import moments
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

TRUE_PARAMS = {
    "a1": 0.8,
    "a2": 0.5,
    "b12": 0.6,
    "b21": -0.4,
    "L_diag": [0.7, 0.5],
    "L_off": 0.2,
    "noise": 0.1,
}


def to_sde(a1, a2, b12, b21, L_diag, L_off, noise):
    """The named parameters as `SDEParams`."""
    F = jnp.array([[-a1, b12], [b21, -a2]])
    L = jnp.diag(jnp.asarray(L_diag)) + jnp.array([[0.0, 0.0], [1.0, 0.0]]) * L_off
    return SDEParams(
        F=F,
        L=L,
        H=jnp.eye(2),
        u=jnp.zeros(2),
        R=noise**2 * jnp.eye(2),
        mu1=jnp.zeros(2),
        P1=jnp.diag(jnp.diag(L @ L.T) / (2.0 * jnp.stack([a1, a2]))),
    )


def start_from_data(times, y):
    """A start in the data's units: uncoupled, each rate from its column's autocovariances at
    one and two steps (g_2 / g_1 = exp(-a step), free of the noise), each diffusion from nine
    tenths of its variance (sigma^2 / (2 a)), the noise from a tenth."""
    m = moments(times, y, lags=2)
    g1, g2 = m.autocovariance[1], m.autocovariance[2]
    ratio = np.where((g1 > 0) & (g2 > 0), g2 / np.where(g1 > 0, g1, 1.0), 0.5)
    rates = -np.log(np.clip(ratio, 0.05, 0.98)) / m.step
    return {
        "a1": rates[0],
        "a2": rates[1],
        "b12": 0.0,
        "b21": 0.0,
        "L_diag": np.sqrt(2 * rates * 0.9 * m.variance),
        "L_off": 0.0,
        "noise": np.sqrt(0.1 * np.mean(m.variance)),
    }


def model(times, y=None, *, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales` (by default
    `sdessm.priors.data_scales(times, y)`), then `y` from `LTISDE` at `times`."""
    s = priors.data_scales(times, y, obs_dim=2) if scales is None else scales
    r, s1, s2 = 1.0 / jnp.sqrt(s.step * s.span), s.spread[0], s.spread[-1]
    a1 = numpyro.sample("a1", priors.rate(s))
    a2 = numpyro.sample("a2", priors.rate(s))
    b12 = numpyro.sample("b12", dist.Normal(0.0, r * s1 / s2))
    b21 = numpyro.sample("b21", dist.Normal(0.0, r * s2 / s1))
    diag_scale = 2.0 * jnp.stack([s1, s2]) * jnp.sqrt(2.0 * jnp.stack([a1, a2]))
    L_diag = numpyro.sample("L_diag", dist.HalfNormal(diag_scale).to_event(1))
    L_off = numpyro.sample("L_off", dist.Normal(0.0, diag_scale[1]))
    noise = numpyro.sample("noise", dist.HalfNormal(0.5 * (s1 + s2)))
    params = to_sde(a1, a2, b12, b21, L_diag, L_off, noise)
    numpyro.sample("y", LTISDE(*params, times=times), obs=y)
