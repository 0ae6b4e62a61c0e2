r"""The pieces of the Kalman recursion that the filter, the smoother, the E-step statistics,
simulation and the parallel scan share: their results, the predict and update steps, the Joseph
form, the smoother gain, and the split of time-varying fields into scan inputs.

`sdessm.kalman` runs them sequentially, `sdessm.parallel` as associative scans; both build on
this module and neither imports the other's internals.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular
from jaxtyping import Array, Float

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


class SufficientStats(NamedTuple):
    """Expected sufficient statistics, summed over sequences (see `sdessm.stats`).

    Transition sums have a leading group axis `G` (groups of equal steps; `G = 1` for uniform
    times). Emission sums have a leading axis `T` when collected per step, none otherwise.
    """

    x1: Float[Array, " d"]
    x1x1: Float[Array, "d d"]
    num_sequences: Float[Array, ""]
    S00: Float[Array, "G d d"]
    S10: Float[Array, "G d d"]
    S11: Float[Array, "G d d"]
    num_transitions: Float[Array, " G"]
    yy: Float[Array, "*T p p"]
    yx: Float[Array, "*T p d+1"]
    xx: Float[Array, "*T d+1 d+1"]
    num_emissions: Float[Array, "*T"]


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


def predict_cov(P, A, Sigma):
    """The predicted covariance `A P A^T + Sigma`, symmetrised."""
    return symmetrize(A @ P @ A.T + Sigma)


def predict(m, P, A, Sigma):
    """One prediction step: the mean `A m` of each row of `m` (`(d,)` or `(b, d)`) and the
    covariance `A P A^T + Sigma` (symmetrised)."""
    return m @ A.T, predict_cov(P, A, Sigma)


def observed_rows(H, obs):
    """`H` with the rows of the missing entries (`obs` False) set to zero."""
    return jnp.where(obs[:, None], H, 0.0)


def decoupled(R, obs):
    """`R` on the observed block and the identity on the missing entries: a missing component
    gets unit variance and no covariance with the others (its Cholesky factor is that of the
    observed block, interleaved with unit rows and columns)."""
    both = obs[..., :, None] & obs[..., None, :]
    return jnp.where(both, R, jnp.eye(R.shape[-1], dtype=R.dtype))


#: Steady state: a covariance recursion with shared parameters and complete data on uniform
#: steps runs this many steps exactly before its converged gains are reused (when it has
#: converged, checked at run time by `steady`; otherwise the full recursion runs). The
#: log-likelihood takes the shortcut on more than 2 STEADY_STEPS steps (one forward recursion,
#: cheap to compile), the E-step from 8 STEADY_STEPS (two recursions; the compilation cost that
#: sets this is measured in `sdessm.steady`). 128 rather than 256 (measured, d = 2, one core):
#: 0.56 instead of 0.76 ms per log-likelihood gradient at T = 1000, 0.66 instead of 0.95 ms per
#: E-step at T = 2000, and both recursions still converge for a lightly damped oscillator.
STEADY_STEPS = 128
#: Converged when successive covariances differ by at most this, relative to their size.
STEADY_RTOL = 1e-13


def steady(previous, current):
    """Whether a covariance recursion has converged: `current` equals `previous` to
    `STEADY_RTOL`, relative to the largest entry of `current` (a rule without units: it holds
    for covariances of order 1e-8 and of order 1e8 alike)."""
    return jnp.max(jnp.abs(current - previous)) <= STEADY_RTOL * jnp.max(jnp.abs(current))


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


def kalman_gain(P, H, R):
    r"""The gain $K = P H^\top S^{-1}$ of an update, $S = H P H^\top + R$, from one Cholesky
    factor $L$ of $S$ and one triangular solve of $L^{-1} [H P,\ I]$:
    `(K, L^{-1} H P, L^{-1}, log|S|)`."""
    p, d = H.shape
    HP = H @ P
    chol = jnp.linalg.cholesky(symmetrize(HP @ H.T + R))
    W = solve_triangular(chol, jnp.concatenate([HP, jnp.eye(p, dtype=P.dtype)], axis=1), lower=True)
    W_P, L_inv = W[:, :d], W[:, d:]
    return W_P.T @ L_inv, W_P, L_inv, 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


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
    p = H.shape[0]
    if complete:
        E = y - m @ H.T - u[None]
        n_obs = p
    else:
        H, R = observed_rows(H, obs), decoupled(R, obs)
        E = jnp.where(obs[None], y - m @ H.T - u[None], 0.0)
        n_obs = jnp.sum(obs).astype(y.dtype)
    gain, W_P, L_inv, log_det = kalman_gain(P, H, R)
    P = joseph(P, gain, H, R)
    w = E @ L_inv.T  # whitened innovations
    m = m + w @ W_P
    return m, P, -0.5 * (n_obs * jnp.log(2.0 * jnp.pi) + log_det + jnp.sum(w * w, axis=1))
