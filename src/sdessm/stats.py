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
from .kalman import _smoother_one, joseph, smoothed_cov, smoother_gain
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

    Exx = P + m[:, :, None] * m[:, None, :]  # E[x_k x_k^T]; XLA drops it where unused
    if num_groups == 1:
        S00 = (psum(w_trans, P[:-1]) + weighted(w_trans, m[:-1]))[None]
        S11 = (psum(w_trans, P[1:]) + weighted(w_trans, m[1:]))[None]
        S10 = (psum(w_trans, C) + weighted(w_trans, m[1:], m[:-1]))[None]
        n_trans = jnp.sum(w_trans)[None]
    else:
        E10 = C + m[1:, :, None] * m[:-1, None, :]
        seg = lambda v: jax.ops.segment_sum(v * _bcast(w_trans, v), groups, num_groups)  # noqa: E731
        S00, S10, S11 = seg(Exx[:-1]), seg(E10), seg(Exx[1:])
        n_trans = jax.ops.segment_sum(w_trans, groups, num_groups)

    if complete and not per_step:
        xhat = jnp.concatenate([m, jnp.ones((T, 1), dtype=y.dtype)], axis=1)
        xx = weighted(w_emit, xhat) + jnp.pad(psum(w_emit, P), ((0, 1), (0, 1)))
        emit = [weighted(w_emit, y), weighted(w_emit, y, xhat), xx, jnp.sum(w_emit)]
    else:
        emit = _missing_emission_stats(params, y, m, Exx, w_emit, per_step)
    stats = SufficientStats(m[0], Exx[0], jnp.ones((), y.dtype), S00, S10, S11, n_trans, *emit)
    return stats, sm.log_likelihood


def _missing_emission_stats(params: LGSSMParams, y, m, Exx, w_emit, per_step: bool):
    """Emission sums with missing entries of y completed by their conditional moments."""
    T = y.shape[0]
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
    return emit if per_step else [jnp.sum(e, axis=0) for e in emit]


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
        complete: `y` has no NaN (static; a faster path, and the steady-state shortcut below
            for shared parameters and T >= 4 STEADY_STEPS).
    """
    T = y.shape[1]
    if groups is None:
        groups = jnp.zeros((T - 1,), dtype=jnp.int32)
    g_axis = 0 if groups.ndim == 2 else None
    p_axes = LGSSMParams(0, 0, None, None, None, None, None) if params_batched else None
    fn = lambda prm, yy, g: _sequence_stats(prm, yy, g, num_groups, per_step, complete)  # noqa: E731

    def full(_):
        stats, logliks = jax.vmap(fn, in_axes=(p_axes, 0, g_axis))(params, y, groups)
        return SufficientStats(*(jnp.sum(s, axis=0) for s in stats)), logliks

    if (
        num_groups == 1
        and not params_batched
        and steady_state_applies(params, T, complete, per_step)
    ):
        cov = _steady_covariances(params)
        return jax.lax.cond(cov["ok"], lambda _: _steady_stats(params, y, cov), full, None)
    return full(None)


# --------------------------------------------------------------------------- steady state
#
# With shared parameters, uniform steps and no missing value, the covariance recursions (filter
# and smoother Riccati equations) do not depend on y and converge geometrically. We run the
# forward recursion for `STEADY_STEPS` steps and the backward smoother recursion for as many
# steps from the end; if both have converged (successive covariances equal to
# `STEADY_RTOL` relative), every step in between uses the converged gains and covariances, and
# only the means are propagated step by step. Otherwise the full recursion runs (`lax.cond`), so
# the result never depends on whether the steady state was reached.

#: Steps of each covariance recursion computed exactly before the steady state is assumed.
STEADY_STEPS = 256
#: Converged when successive covariances differ by at most this, relative to their size.
STEADY_RTOL = 1e-13


def steady_state_applies(params: LGSSMParams, T: int, complete: bool, per_step: bool) -> bool:
    return (
        complete
        and not per_step
        and not any(params.time_varying().values())
        and T >= 4 * STEADY_STEPS
    )


def _converged(a, b):
    return jnp.max(jnp.abs(a - b)) <= STEADY_RTOL * jnp.maximum(1.0, jnp.max(jnp.abs(b)))


def _steady_covariances(params: LGSSMParams):
    """The first STEADY_STEPS steps of the forward and backward covariance recursions."""
    A, Sigma, H, R = params.A, params.Sigma, params.H, params.R
    eye_p = jnp.eye(params.obs_dim, dtype=A.dtype)

    def forward(P_pred, _):
        L = jnp.linalg.cholesky(symmetrize(H @ P_pred @ H.T + R))
        L_inv = jax.scipy.linalg.solve_triangular(L, eye_p, lower=True)
        gain = (L_inv @ H @ P_pred).T @ L_inv  # K = P H^T S^{-1}
        P_filt = joseph(P_pred, gain, H, R)
        P_next = symmetrize(A @ P_filt @ A.T + Sigma)
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
        G = smoother_gain(P_filt, P_next, A)
        return P_next, (P_pred, P_filt, gain, L_inv, log_det, G, P_next)

    _, head = jax.lax.scan(forward, params.P1, None, length=STEADY_STEPS)
    P_pred, P_filt, gain, L_inv, log_det, G, P_next = head
    fwd_ok = _converged(P_next[-1], P_pred[-1]) & _converged(P_pred[-1], P_pred[-2])

    P_filt_inf, G_inf = P_filt[-1], G[-1]

    def backward_tail(P_s_next, _):
        P_s = smoothed_cov(P_filt_inf, P_s_next, G_inf, A, Sigma)
        return P_s, P_s

    _, tail = jax.lax.scan(backward_tail, P_filt_inf, None, length=STEADY_STEPS - 1)
    tail = jnp.concatenate([tail[::-1], P_filt_inf[None]])  # steps T-N .. T-1
    P_s_inf = tail[0]
    bwd_ok = _converged(tail[0], tail[1])

    def backward_head(P_s_next, xs):
        P_f, G_k = xs
        P_s = smoothed_cov(P_f, P_s_next, G_k, A, Sigma)
        return P_s, (P_s, P_s_next @ G_k.T)

    _, (head_s, head_cross) = jax.lax.scan(backward_head, P_s_inf, (P_filt, G), reverse=True)
    return dict(
        ok=fwd_ok & bwd_ok,
        gain=gain,
        L_inv=L_inv,
        log_det=log_det,
        G=G,
        head_s=head_s,
        head_cross=head_cross,
        tail_s=tail,
        P_s_inf=P_s_inf,
    )


def _steady_stats(params: LGSSMParams, y, cov):
    """Statistics of B complete sequences (B, T, p) from the steady-state covariances `cov`."""
    A, H, u = params.A, params.H, params.u
    B, T, p = y.shape
    N = STEADY_STEPS
    idx = jnp.minimum(jnp.arange(T), N - 1)

    def means(y1):
        def forward(m_pred, xs):
            y_k, i = xs
            e = y_k - H @ m_pred - u
            w = cov["L_inv"][i] @ e
            m_filt = m_pred + cov["gain"][i] @ e
            ll = -0.5 * (p * jnp.log(2.0 * jnp.pi) + cov["log_det"][i] + w @ w)
            return A @ m_filt, (m_filt, m_pred, ll)

        _, (m_filt, m_pred, lls) = jax.lax.scan(forward, params.mu1, (y1, idx))

        def backward(m_next, xs):
            m_f, m_p_next, i = xs
            m = m_f + cov["G"][i] @ (m_next - m_p_next)
            return m, m

        _, ms = jax.lax.scan(
            backward, m_filt[-1], (m_filt[:-1], m_pred[1:], idx[:-1]), reverse=True
        )
        return jnp.concatenate([ms, m_filt[-1:]]), jnp.sum(lls)

    m, logliks = jax.vmap(means)(y)
    n_mid = T - 2 * N
    sum_P = cov["head_s"].sum(0) + n_mid * cov["P_s_inf"] + cov["tail_s"].sum(0)
    # sum_{k=0}^{T-2} Cov[x_{k+1}, x_k] = sum_k P_{k+1} G_k^T; G_k is constant from step N - 1
    after = (n_mid - 1) * cov["P_s_inf"] + cov["tail_s"].sum(0)  # sum of P_j, j = N+1 .. T-1
    sum_cross = cov["head_cross"].sum(0) + after @ cov["G"][-1].T
    P_first, P_last = cov["head_s"][0], cov["tail_s"][-1]

    def outer(a, b=None):  # sum over sequences and steps of a_k b_k^T
        return jnp.einsum("bti,btj->ij", a, a if b is None else b)

    xhat = jnp.concatenate([m, jnp.ones((B, T, 1), dtype=y.dtype)], axis=2)
    stats = SufficientStats(
        x1=jnp.sum(m[:, 0], axis=0),
        x1x1=B * P_first + m[:, 0].T @ m[:, 0],
        num_sequences=jnp.asarray(B, dtype=y.dtype),
        S00=(B * (sum_P - P_last) + outer(m[:, :-1]))[None],
        S10=(B * sum_cross + outer(m[:, 1:], m[:, :-1]))[None],
        S11=(B * (sum_P - P_first) + outer(m[:, 1:]))[None],
        num_transitions=jnp.asarray([B * (T - 1)], dtype=y.dtype),
        yy=outer(y),
        yx=outer(y, xhat),
        xx=outer(xhat) + jnp.pad(B * sum_P, ((0, 1), (0, 1))),
        num_emissions=jnp.asarray(B * T, dtype=y.dtype),
    )
    return stats, logliks
