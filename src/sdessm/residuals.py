r"""One-step-ahead innovations: the filter's prediction errors, and the same whitened.

With $\hat y_k = H_k m_k^- + u_k$ and $S_k = H_k P_k^- H_k^\top + R_k$ the mean and covariance of
$y_k$ given $y_{1:k-1}$ (the filter's predicted state moments $m_k^-, P_k^-$), the innovation is
$e_k = y_k - \hat y_k$ and the standardised innovation is $w_k = C_k^{-1} e_k$ with $C_k$ the
lower Cholesky factor of $S_k$ over the entries observed at step $k$ (in their column order:
$w_{k,1} = e_{k,1} / \sqrt{S_{k,11}}$, $w_{k,2}$ the part of $e_{k,2}$ that $e_{k,1}$ does not
predict, scaled, and so on). Under the model, the $w_{k,i}$ of all observed entries are exactly
independent N(0, 1): stacked in time order they are $C^{-1} (y - \mathrm{E}\,y)$ with $C$ the
lower Cholesky factor of the joint covariance of the observed entries (the prediction-error
decomposition of the likelihood). Their log densities,
$\log p(y_k \mid y_{1:k-1}) = -\tfrac12 (n_k \log 2\pi + \log\det S_k + w_k^\top w_k)$ over the
$n_k$ observed entries, sum to the log-likelihood.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, ArrayLike, Float

from ._checks import float64
from .kalman import kalman_filter, prepare
from .params import LGSSMParams, SDEParams


class Innovations(NamedTuple):
    r"""Output of `innovations`; with `B` sequences every field gains a leading `B` axis.

    `standardized[k]` is $w_k$ and `innovations[k]` is $e_k$ (NaN where $y_k$ is missing),
    `covariances[k]` is $S_k$ over all columns, `log_densities[k]` is
    $\log p(y_k \mid y_{1:k-1})$ over the observed entries (0 for a row with none).
    """

    standardized: Float[Array, "*B T p"]
    innovations: Float[Array, "*B T p"]
    covariances: Float[Array, "*B T p p"]
    log_densities: Float[Array, "*B T"]


@float64
def innovations(
    params: LGSSMParams | SDEParams,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, "*B T"] | None = None,
    *,
    dt: float | None = None,
) -> Innovations:
    r"""One-step-ahead innovations of `y` under `params`, raw and standardised (module docstring).

    Residual checks of a fitted model (serial correlation, normality, constant variance) read
    `standardized`: i.i.d. N(0, 1) when the model is right.

    Args:
        params: an `LGSSMParams`, or an `SDEParams` with `times` or `dt` (as `kalman_filter`).
        y: observations `(T, p)` or `(B, T, p)`; NaN marks a missing value.
        times: observation times `(T,)` or `(B, T)`; `SDEParams` only.
        dt: a uniform step instead of `times`; `SDEParams` only.

    Returns:
        An `Innovations`.

    Raises:
        ValueError: an argument has a wrong shape or value (as `kalman_filter`).

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
        >>> res = sdessm.innovations(rw, jnp.array([[2.0], [jnp.nan]]), dt=1.0)
        >>> [round(w, 6) for w in res.standardized[:, 0].tolist()]  # y_1 = 2 vs N(0, P1 + R)
        [1.414214, nan]
    """
    filtered = kalman_filter(params, y, times, dt=dt)
    discrete, y, _ = prepare(params, y, times, dt)
    m, P = filtered.predicted_means, filtered.predicted_covs
    lead = m.shape[:-1]  # (*B, T); H, u, R are shared or one per step (T leading)
    H, u, R = (
        jnp.broadcast_to(x, lead + x.shape[x.ndim - n :])
        for x, n in ((discrete.H, 2), (discrete.u, 1), (discrete.R, 2))
    )
    predicted = jnp.einsum("...pd,...d->...p", H, m) + u
    S = H @ P @ jnp.swapaxes(H, -1, -2) + R
    S = 0.5 * (S + jnp.swapaxes(S, -1, -2))
    observed = ~jnp.isnan(y)
    e = jnp.where(observed, y - predicted, 0.0)
    # the observed block of S, the identity on the missing entries: its Cholesky factor is that
    # of the observed block, interleaved with unit rows and columns
    both = observed[..., :, None] & observed[..., None, :]
    C = jnp.linalg.cholesky(jnp.where(both, S, jnp.eye(S.shape[-1], dtype=S.dtype)))
    w = solve_triangular(C, e[..., None], lower=True)[..., 0]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(C, axis1=-2, axis2=-1)), axis=-1)
    n = jnp.sum(observed, axis=-1).astype(S.dtype)
    log_densities = -0.5 * (n * jnp.log(2.0 * jnp.pi) + log_det + jnp.sum(w**2, axis=-1))
    nan = jnp.asarray(jnp.nan, dtype=S.dtype)
    return Innovations(jnp.where(observed, w, nan), jnp.where(observed, e, nan), S, log_densities)
