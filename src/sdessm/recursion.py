r"""The pieces of the Kalman recursion that the filter, the smoother, the E-step statistics,
simulation and the parallel scan share: their results, the predict and update steps, the Joseph
form, the smoother gain, and the split of time-varying fields into scan inputs.

`sdessm.kalman` runs them sequentially, `sdessm.parallel` as associative scans; both build on
this module and neither imports the other's internals.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve, solve_triangular
from jaxtyping import Array, Float

from ._checks import concrete
from .discretize import symmetrize
from .params import LGSSMParams


class FilterResult(NamedTuple):
    r"""Output of `kalman_filter`; with `B` sequences every field gains a leading `B` axis.

    `predicted_*[k]` is $p(x_k \mid y_{1:k-1})$ (so `predicted_*[0]` is $(\mu_1, P_1)$),
    `filtered_*[k]` is $p(x_k \mid y_{1:k})$, and `log_likelihood` is $\log p(y_{1:T})$ of each
    sequence, over its observed entries only.
    """

    filtered_means: Float[Array, "*B T d"]
    filtered_covs: Float[Array, "*B T d d"]
    predicted_means: Float[Array, "*B T d"]
    predicted_covs: Float[Array, "*B T d d"]
    log_likelihood: Float[Array, "*B"]


class SmootherResult(NamedTuple):
    r"""Output of `rts_smoother`; with `B` sequences every field gains a leading `B` axis.

    `smoothed_*[k]` is $p(x_k \mid y_{1:T})$; `cross_covs[k]` is
    $\mathrm{Cov}[x_{k+1}, x_k \mid y_{1:T}]$ for $k = 1..T-1$.
    """

    smoothed_means: Float[Array, "*B T d"]
    smoothed_covs: Float[Array, "*B T d d"]
    cross_covs: Float[Array, "*B T-1 d d"]
    log_likelihood: Float[Array, "*B"]


def joseph(P, gain, H, R):
    """Joseph-form filtered covariance (I - K H) P (I - K H)^T + K R K^T, symmetrised."""
    I_KH = jnp.eye(P.shape[-1], dtype=P.dtype) - gain @ H
    return symmetrize(I_KH @ P @ I_KH.T + gain @ R @ gain.T)


def smoother_gain(P_filt, P_pred_next, A):
    """RTS gain G = P_filt A^T P_pred_next^{-1}, by a Cholesky solve."""
    return cho_solve((jnp.linalg.cholesky(P_pred_next), True), A @ P_filt).T


def smoothed_cov(P_filt, P_smooth_next, gain, A, Sigma):
    r"""RTS smoothed covariance $P_f + G (P^s_{k+1} - A P_f A^\top - \Sigma) G^\top$, as a sum
    of PSD terms (the smoother's Joseph form):
    $(I - G A) P_f (I - G A)^\top + G (\Sigma + P^s_{k+1}) G^\top$, equal for the optimal $G$.
    The difference form cancels where $P_f$ is small against $P^s_{k+1}$ and can turn negative
    (float32 with observation noise of 1e-10 and short steps); this one stays PSD, symmetrised.
    """
    I_GA = jnp.eye(A.shape[-1], dtype=A.dtype) - gain @ A
    return symmetrize(I_GA @ P_filt @ I_GA.T + gain @ (Sigma + P_smooth_next) @ gain.T)


def predict(m, P, A, Sigma):
    """One prediction step: the mean `A m` and covariance `A P A^T + Sigma` (symmetrised)."""
    return A @ m, symmetrize(A @ P @ A.T + Sigma)


def scan_inputs(params: LGSSMParams):
    """Split `params` into shared fields and per-step scan inputs.

    Transitions are indexed by the step they lead *into* (k = 2..T), emissions by k = 2..T, so the
    filter scan (over k = 2..T) reads both at the same index; emissions at k = 1 are `first`.
    """
    tv = params.time_varying()
    shared = {k: getattr(params, k) for k in ("A", "Sigma", "H", "u", "R") if not tv[k]}
    per_step = {k: getattr(params, k) for k in ("A", "Sigma") if tv[k]}
    per_step |= {k: getattr(params, k)[1:] for k in ("H", "u", "R") if tv[k]}
    first = {k: getattr(params, k)[0] if tv[k] else getattr(params, k) for k in ("H", "u", "R")}
    return shared, per_step, first


def update_rows(m, P, H, u, R, y, obs, complete: bool = False):
    r"""Condition the rows of `m` `(b, d)`, which share the covariance `P` and the NaN mask `obs`
    `(p,)`, on the observed entries of their `y` `(b, p)` ~ N(H x + u, R): `(m, P, loglik (b,))`.

    With the Cholesky factor $L$ of $S = H P H^\top + R$, one triangular solve gives
    $L^{-1} [H P,\ I]$: the gain $K = (L^{-1} H P)^\top L^{-1}$ (for the Joseph-form covariance),
    the whitened innovations $w = L^{-1} e$ (Mahalanobis term $w^\top w$) and the update
    $(L^{-1} H P)^\top w$. `complete` (static) promises no NaN (`obs` None) and skips the
    masking. The rows only meet matrix products (the gain comes from `P` alone): sharded along
    the sequences, they need no exchange.
    """
    p, d = H.shape
    if complete:
        E = y - m @ H.T - u[None]
        n_obs = p
    else:
        H = jnp.where(obs[:, None], H, 0.0)
        R = jnp.where(obs[:, None] & obs[None, :], R, jnp.eye(p, dtype=R.dtype))
        E = jnp.where(obs[None], y - m @ H.T - u[None], 0.0)
        n_obs = jnp.sum(obs).astype(y.dtype)
    HP = H @ P
    chol = jnp.linalg.cholesky(symmetrize(HP @ H.T + R))
    W = solve_triangular(chol, jnp.concatenate([HP, jnp.eye(p, dtype=P.dtype)], axis=1), lower=True)
    W_P, L_inv = W[:, :d], W[:, d:]  # L^{-1} H P and L^{-1}, with S = L L^T
    gain = W_P.T @ L_inv  # K = P H^T S^{-1}
    P = joseph(P, gain, H, R)
    w = E @ L_inv.T  # whitened innovations
    m = m + w @ W_P
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    return m, P, -0.5 * (n_obs * jnp.log(2.0 * jnp.pi) + log_det + jnp.sum(w * w, axis=1))


def shares_mask(y) -> bool:
    """Whether `y` `(B, T, p)` is concrete and all its sequences have the NaN mask of the first."""
    v = concrete(y)
    if v is None or not np.issubdtype(v.dtype, np.floating):
        return False
    missing = np.isnan(v)
    return bool((missing == missing[:1]).all())
