"""OU process driven by known inputs v: dx = (-theta x + b v) dt + sigma dW, y = x + u + d v + e.

The inputs v(t) (m of them, `inputs` `(T, m)`: a stimulus, a heater's power, a dose, rainfall)
are known and held constant from each observation time to the next (zero-order hold). A step of
input j by one unit moves the state's equilibrium by b_j / theta, reached at the rate theta; d_j
is its immediate effect on the observations.

Parameters and units (time in the units of `times`, y in its own units, each input in its own):

- theta (1/time): mean-reversion rate; `sdessm.priors.rate` (between 1/span and 1/step).
- sigma (y / sqrt(time)): diffusion; given theta, HalfNormal(2 spread sqrt(2 theta)).
- b (m,) (y / (time input)): drift gains; given theta, Normal(0, 2.5 spread theta / sd(v_j)),
  so that a typical change of input j moves the equilibrium by about 2.5 spreads at most.
- d (m,) (y / input): direct gains; Normal(0, 2.5 spread / sd(v_j)).
- u (y): the level at zero input; Normal(level, 2.5 spread).
- noise (y): observation noise sd; HalfNormal(spread).

level and spread are the median and robust sd of y (`sdessm.priors.data_scales`); sd(v_j) is the
standard deviation of input j (1 for a constant input).

The initial state is drawn from the law of the undriven process, N(0, sigma^2 / (2 theta)).
Identified: all, given inputs that change on the time scale of 1/theta and a record long against
it. A constant input is confounded with u (b_j / theta + d_j and u trade off); an input that
changes only much slower than 1/theta identifies b_j / theta + d_j but not b_j and d_j apart.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from sdessm.models.ou import to_sde as undriven

from sdessm import priors
from sdessm.moments import moments
from sdessm.ppl import LTISDE

TRUE_PARAMS = {"theta": 0.5, "sigma": 0.8, "u": 1.0, "noise": 0.2, "b": [1.0], "d": [0.5]}
#: The names of the inputs of `example_inputs` (the columns `sdessm simulate` writes them to).
INPUT_NAMES = ["v"]


def example_inputs(times):
    """The input that simulations use when none is given: a unit square wave (0 then 1) that
    switches every 10 rows, `(T, 1)`."""
    rows = np.arange(np.shape(times)[-1])
    return ((rows // 10) % 2).astype(float)[:, None]


def to_sde(theta, sigma, u, noise, b, d):
    """The named parameters as `SDEParams`: the zoo's `ou` with input gains `B = b`, `D = d`
    (rows)."""
    b, d = jnp.atleast_1d(jnp.asarray(b, dtype=float)), jnp.atleast_1d(jnp.asarray(d, dtype=float))
    return undriven(theta, sigma, u, noise)._replace(B=b[None, :], D=d[None, :])


def _inputs(inputs, times):
    if inputs is None:
        raise ValueError(
            "driven_ou needs its known inputs: model_kwargs={'inputs': v} with v of shape "
            "(T, m), or `--inputs COLUMNS` on the command line."
        )
    v = np.asarray(inputs, dtype=float)
    if v.ndim != 2 or v.shape[0] != np.shape(times)[-1]:
        raise ValueError(
            f"driven_ou: `inputs` must be (T, m) with T = {np.shape(times)[-1]} rows; got "
            f"{v.shape}."
        )
    return v


def _input_sd(v):
    sd = np.std(v, axis=0)
    return np.where(sd > 0, sd, 1.0)


def start_from_data(times, y, *, inputs=None, scales=None):
    """A start in the data's units from a least-squares ARX(1) fit on consecutive observed rows,
    y_{k+1} = c + phi y_k + beta v_k: theta = -log(phi) / step and, since the exact discrete
    drift gain is b (1 - phi) / theta, b = beta theta / (1 - phi). The noise split and sigma
    follow from the residual variance as for `ou` (d starts at 0)."""
    v = _inputs(inputs, times)
    y1 = np.asarray(y, dtype=float).reshape(-1, np.shape(y)[-1])[:, 0]
    m = moments(times, y)
    pairs = np.isfinite(y1[:-1]) & np.isfinite(y1[1:])
    X = np.column_stack([np.ones(pairs.sum()), y1[:-1][pairs], v[:-1][pairs]])
    coef, *_ = np.linalg.lstsq(X, y1[1:][pairs], rcond=None)
    phi = float(np.clip(coef[1], 0.05, 0.98))
    theta = -np.log(phi) / m.step
    b = coef[2:] * theta / (1.0 - phi)
    resid = y1[1:][pairs] - X @ coef
    innovation = max(float(np.var(resid)), 1e-12)
    variance = innovation / (1.0 - phi**2)  # of the undriven state
    noise = np.sqrt(0.1 * innovation)
    return {
        "theta": theta,
        "sigma": np.sqrt(2 * theta * 0.9 * variance),
        "u": float(coef[0] / (1.0 - phi)),
        "noise": noise,
        "b": b,
        "d": np.zeros(v.shape[1]),
    }


def model(times, y=None, *, inputs=None, scales=None):
    """NumPyro model: priors on the named parameters, in the units of `scales` (by default
    `sdessm.priors.data_scales(times, y)`) and of the inputs, then `y` from `LTISDE` at `times`
    driven by `inputs` `(T, m)`."""
    v = _inputs(inputs, times)
    s = priors.data_scales(times, y) if scales is None else scales
    sd_v = jnp.asarray(_input_sd(v))
    theta = numpyro.sample("theta", priors.rate(s))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0 * s.spread[0] * jnp.sqrt(2.0 * theta)))
    b = numpyro.sample("b", dist.Normal(0.0, 2.5 * s.spread[0] * theta / sd_v).to_event(1))
    d = numpyro.sample("d", dist.Normal(0.0, 2.5 * s.spread[0] / sd_v).to_event(1))
    u = numpyro.sample("u", priors.location(s))
    noise = numpyro.sample("noise", priors.scale(s))
    sde = to_sde(theta, sigma, u, noise, b, d)
    numpyro.sample("y", LTISDE(*sde, times=times, inputs=jnp.asarray(v)), obs=y)
