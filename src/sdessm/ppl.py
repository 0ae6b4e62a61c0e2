r"""The LTI-SDE state-space model as a NumPyro distribution over observation sequences.

`LTISDE(F, L, H, u, R, mu1, P1, times=times)` is the law of $y_{1:T}$ with the states
marginalised by the Kalman filter: `log_prob(y)` is the exact marginal log-likelihood (NaN =
missing), and `sample` draws exactly. Known inputs enter with `B=`, `D=` and `inputs=`. A
NumPyro model samples its parameter sites from priors and ends with
`numpyro.sample("y", LTISDE(...), obs=y)`; the same model serves NUTS and EM.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, constraints

from .kalman import log_likelihood
from .params import SDEParams
from .simulate import simulate


class LTISDE(Distribution):
    r"""Observations `(T, p)` of $dx = F x\,dt + L\,dW$, $y_k = H x(t_k) + u + r_k$.

    The parameters are the fields of `SDEParams`, unbatched, and the observation times.

    Args:
        F (ArrayLike): drift `(d, d)`.
        L (ArrayLike): diffusion `(d, m)`; $Q = L L^\top$.
        H (ArrayLike): observation matrix `(p, d)`.
        u (ArrayLike): observation offset `(p,)`.
        R (ArrayLike): observation noise covariance `(p, p)`.
        mu1 (ArrayLike): mean of the state at the first observation `(d,)`.
        P1 (ArrayLike): covariance of the state at the first observation `(d, d)`.
        B (ArrayLike | None): input gain in the drift `(d, m)`, $dx = (F x + B v)\,dt + L\,dW$.
        D (ArrayLike | None): input gain in the observations `(p, m)`, $+ D v_k$.
        times (ArrayLike): observation times `(T,)`, strictly increasing (concrete, so that
            equal steps share one matrix exponential); a keyword argument.
        inputs (ArrayLike | None): the known inputs `(T, m)` when `B` or `D` is given, held
            over each step (zero-order hold; see `sdessm.kalman_filter`).
        validate_args (bool | None): NumPyro's argument validation.

    The event shape is `(T, p)`; `log_prob` takes `(..., T, p)` and returns `(...)`, one value
    per sequence. NaN entries of `y` are missing and are marginalised.

    Examples:
        >>> import jax, jax.numpy as jnp, sdessm
        >>> from sdessm.ppl import LTISDE
        >>> d = LTISDE(F=-jnp.eye(1), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...            R=0.1 * jnp.eye(1), mu1=jnp.zeros(1), P1=0.5 * jnp.eye(1),
        ...            times=jnp.linspace(0.0, 1.0, 5))
        >>> y = d.sample(jax.random.key(0), (3,))
        >>> y.shape, d.log_prob(y).shape
        ((3, 5, 1), (3,))
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    pytree_data_fields = ("params", "times", "inputs")

    def __init__(
        self, F, L, H, u, R, mu1, P1, B=None, D=None, *, times, inputs=None, validate_args=None
    ):
        self.params = SDEParams(F, L, H, u, R, mu1, P1, B, D)
        self.times = times
        self.inputs = inputs
        T, p = int(np.shape(times)[-1]), int(np.shape(H)[-2])
        super().__init__(batch_shape=(), event_shape=(T, p), validate_args=validate_args)

    def log_prob(self, value):
        T, p = self.event_shape
        lead = tuple(np.shape(value)[:-2])
        # a concrete (NumPy) value stays concrete, so that complete data skip the masking
        flat = value if len(lead) <= 1 else jnp.reshape(value, (math.prod(lead), T, p))
        ll = log_likelihood(self.params, flat, self.times, inputs=self.inputs)
        return ll.reshape(lead)

    def sample(self, key, sample_shape=()):
        n = math.prod(sample_shape)
        if n == 1 and not sample_shape:
            return simulate(key, self.params, self.times, inputs=self.inputs)[1]
        _, y = simulate(key, self.params, self.times, n, inputs=self.inputs)
        return y.reshape(tuple(sample_shape) + self.event_shape)
