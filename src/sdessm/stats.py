r"""Expected sufficient statistics of the complete data from one smoother pass (the E-step).

With $\hat x = [x; 1]$ and the smoothed moments $m_k$, $P_k$, $C_k = \mathrm{Cov}[x_{k+1}, x_k]$:

- initial state: $\sum_b E[x_1]$, $\sum_b E[x_1 x_1^\top]$;
- transitions, summed within each group of equal steps: $S_{00} = \sum E[x_k x_k^\top]$,
  $S_{10} = \sum E[x_{k+1} x_k^\top]$, $S_{11} = \sum E[x_{k+1} x_{k+1}^\top]$;
- emissions (summed over steps, or per step): $E[y y^\top]$, $E[y \hat x^\top]$,
  $E[\hat x \hat x^\top]$.

Missing values are latent, not dropped (Shumway & Stoffer): given $x_k$ and the observed part
$y_o$, the missing part is $y_m = J x_k + c + \varepsilon$ with $J = H_m - R_{mo} R_{oo}^{-1} H_o$,
$c = u_m + R_{mo} R_{oo}^{-1} (y_o - u_o)$ and
$\varepsilon \sim N(0, R_{mm} - R_{mo} R_{oo}^{-1} R_{om})$, all under the current parameters.

Trailing time steps of a sequence that are entirely NaN are padding: they add no emission and no
transition, so padded and unpadded data give the same statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .discretize import symmetrize
from .kalman import _smoother_one
from .params import LGSSMParams


class SufficientStats(NamedTuple):
    """Expected sufficient statistics, summed over sequences (see the module docstring).

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


def conditional_emission(H, u, R, y):
    """Moments of the completed `y` given x and its observed entries: `y = G x + c + e`, Cov e.

    For a fully observed `y`: `G = 0`, `c = y`, `Cov e = 0`; fully missing: `G = H`, `c = u`,
    `Cov e = R`. No branching: the masked identities below reduce to those blocks.
    """
    p = y.shape[-1]
    obs = ~jnp.isnan(y)
    both = obs[:, None] & obs[None, :]
    R_tilde = jnp.where(both, R, jnp.eye(p, dtype=R.dtype))  # blockdiag(R_oo, I)
    chol = jnp.linalg.cholesky(R_tilde)
    # M = R[:, o] R_oo^{-1} on observed columns, 0 on missing ones (so M[o, o] = I)
    M = jax.scipy.linalg.cho_solve((chol, True), jnp.where(obs[None, :], R, 0.0).T).T
    H_o = jnp.where(obs[:, None], H, 0.0)
    G = H - M @ H_o  # rows of observed entries vanish
    resid = jnp.where(obs, y - u, 0.0)
    c = u + M @ resid  # observed entries: y
    cov = R - M @ jnp.where(obs[:, None], R, 0.0)
    return G, c, symmetrize(cov)


def _sequence_stats(params: LGSSMParams, y, groups, num_groups: int, per_step: bool, complete):
    """Statistics of one sequence `y` (T, p) and its log-likelihood.

    `complete` (static) promises that `y` has no NaN: the emission sums are then plain matrix
    products. With one transition group the transition sums are too.
    """
    T = y.shape[0]
    sm = _smoother_one(params, y, complete)
    m, P, C = sm.smoothed_means, sm.smoothed_covs, sm.cross_covs
    observed_rows = jnp.any(~jnp.isnan(y), axis=-1)
    length = T - jnp.argmax(observed_rows[::-1])  # 1 + index of the last observed row
    length = jnp.where(jnp.any(observed_rows), length, T)
    w_emit = (jnp.arange(T) < length).astype(y.dtype)
    w_trans = (jnp.arange(T - 1) < length - 1).astype(y.dtype)

    def weighted(w, A, B=None):  # sum_k w_k A_k B_k^T for rows A_k, B_k
        return (A * w[:, None]).T @ (A if B is None else B)

    def psum(w, P):  # sum_k w_k P_k
        return jnp.einsum("t,tij->ij", w, P)

    first = P[0] + jnp.outer(m[0], m[0])
    if num_groups == 1:
        S00 = (psum(w_trans, P[:-1]) + weighted(w_trans, m[:-1]))[None]
        S11 = (psum(w_trans, P[1:]) + weighted(w_trans, m[1:]))[None]
        S10 = (psum(w_trans, C) + weighted(w_trans, m[1:], m[:-1]))[None]
        n_trans = jnp.sum(w_trans)[None]
    else:
        Exx = P + m[:, :, None] * m[:, None, :]
        E10 = C + m[1:, :, None] * m[:-1, None, :]
        seg = lambda v: jax.ops.segment_sum(v * _bcast(w_trans, v), groups, num_groups)  # noqa: E731
        S00, S10, S11 = seg(Exx[:-1]), seg(E10), seg(Exx[1:])
        n_trans = jax.ops.segment_sum(w_trans, groups, num_groups)

    if complete and not per_step:
        xhat = jnp.concatenate([m, jnp.ones((T, 1), dtype=y.dtype)], axis=1)
        xx = weighted(w_emit, xhat) + jnp.pad(psum(w_emit, P), ((0, 1), (0, 1)))
        emit = [weighted(w_emit, y), weighted(w_emit, y, xhat), xx, jnp.sum(w_emit)]
        stats = SufficientStats(m[0], first, jnp.ones((), y.dtype), S00, S10, S11, n_trans, *emit)
        return stats, sm.log_likelihood
    Exx = P + m[:, :, None] * m[:, None, :]

    tv = params.time_varying()
    H = params.H if tv["H"] else jnp.broadcast_to(params.H, (T,) + params.H.shape)
    u = params.u if tv["u"] else jnp.broadcast_to(params.u, (T,) + params.u.shape)
    R = params.R if tv["R"] else jnp.broadcast_to(params.R, (T,) + params.R.shape)
    G, c, cov = jax.vmap(conditional_emission)(H, u, R, y)
    Ey = jnp.einsum("tpd,td->tp", G, m) + c
    Eyx = jnp.einsum("tpd,tde->tpe", G, Exx) + c[:, :, None] * m[:, None, :]
    Eyy = (
        jnp.einsum("tpd,tde,tqe->tpq", G, Exx, G)
        + jnp.einsum("tpd,td,tq->tpq", G, m, c)
        + jnp.einsum("tp,td,tqd->tpq", c, m, G)
        + c[:, :, None] * c[:, None, :]
        + cov
    )
    top = jnp.concatenate([Exx, m[:, :, None]], axis=2)
    bottom = jnp.concatenate([m[:, None, :], jnp.ones((T, 1, 1), dtype=y.dtype)], axis=2)
    xx = jnp.concatenate([top, bottom], axis=1)  # E[xhat xhat^T], xhat = [x; 1]
    yx = jnp.concatenate([Eyx, Ey[:, :, None]], axis=2)
    emit = [Eyy * _bcast(w_emit, Eyy), yx * _bcast(w_emit, yx), xx * _bcast(w_emit, xx), w_emit]
    if not per_step:
        emit = [jnp.sum(e, axis=0) for e in emit]
    stats = SufficientStats(m[0], first, jnp.ones((), y.dtype), S00, S10, S11, n_trans, *emit)
    return stats, sm.log_likelihood


def _bcast(w, v):
    return jnp.reshape(w, w.shape + (1,) * (v.ndim - w.ndim))


def expected_stats(
    params: LGSSMParams,
    y: Float[Array, "B T p"],
    groups: Int[Array, "*B T-1"] | None = None,
    num_groups: int = 1,
    per_step: bool = False,
    params_batched: bool = False,
    complete: bool = False,
) -> tuple[SufficientStats, Float[Array, " B"]]:
    """E-step: statistics summed over the `B` sequences, and each sequence's log-likelihood.

    Args:
        params: validated discrete parameters (per-sequence `A`, `Sigma` when `params_batched`).
        y: `(B, T, p)` observations, NaN = missing.
        groups: group index of each transition, `(T-1,)` or `(B, T-1)`; None puts all in group 0.
        num_groups: `G`, the number of groups (static).
        per_step: keep emission statistics per time step (for per-step emissions).
        params_batched: `params.A`, `.Sigma` carry a leading sequence axis.
        complete: `y` has no NaN (static; a faster path).
    """
    T = y.shape[1]
    if groups is None:
        groups = jnp.zeros((T - 1,), dtype=jnp.int32)
    g_axis = 0 if groups.ndim == 2 else None
    p_axes = LGSSMParams(0, 0, None, None, None, None, None) if params_batched else None
    fn = lambda prm, yy, g: _sequence_stats(prm, yy, g, num_groups, per_step, complete)  # noqa: E731
    stats, logliks = jax.vmap(fn, in_axes=(p_axes, 0, g_axis))(params, y, groups)
    return SufficientStats(*(jnp.sum(s, axis=0) for s in stats)), logliks
