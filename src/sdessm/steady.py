r"""The steady-state shortcut of the E-step: long complete data on uniform steps with shared
parameters, where the filter and smoother gains converge and only the means need a recursion.

With shared parameters, uniform steps and no missing value, the covariance recursions (filter
and smoother Riccati equations) do not depend on y and converge geometrically. We run the
forward recursion for `STEADY_STEPS` steps and the backward smoother recursion for as many
steps from the end; if both have converged (`sdessm.recursion.steady`: successive
covariances equal to `STEADY_RTOL`, relative), every step in between uses the converged gains
and covariances, and only the means are propagated step by step. Otherwise the full recursion
runs (`lax.cond`), so the result never depends on whether the steady state was reached.

Both branches are compiled: the shortcut adds about 1.3 s of compilation to a fit (d = 2,
T = 1000: the iteration compiles in 2.3 s instead of 1.0 s) and saves 2.2 ms per iteration
there (3.2 -> 0.9 ms, one core). It is taken from `SHORTCUT_FROM` (1024) steps on, where a
fit of a few hundred iterations recovers the compilation (at T = 10^4, d = 8 the full
recursion costs about 0.1 s per iteration, the shortcut 6.5 ms); shorter data compile the
full recursion alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .params import LGSSMParams
from .recursion import (
    STEADY_STEPS,
    SufficientStats,
    joseph,
    kalman_gain,
    predict_cov,
    smoothed_cov,
    smoother_gain,
    steady,
)

#: The E-step tries the shortcut on this many steps or more (module docstring).
SHORTCUT_FROM = 8 * STEADY_STEPS


def steady_state_applies(params: LGSSMParams, T: int, complete: bool, per_step: bool) -> bool:
    """Whether the E-step tries the shortcut: complete data, shared parameters and emissions,
    and `T >= SHORTCUT_FROM` (see the module docstring for the measured reason)."""
    return (
        complete and not per_step and not any(params.time_varying().values()) and T >= SHORTCUT_FROM
    )


def _covariance_steps(params: LGSSMParams, num_steps: int):
    """The first `num_steps` steps of the forward covariance recursion, from `P1`, each
    `(num_steps, ...)`: predicted and filtered covariances, filter gains, inverse Cholesky
    factors and log-determinants of the innovation covariances, RTS gains, next predictions."""
    A, Sigma, H, R = params.A, params.Sigma, params.H, params.R

    def forward(P_pred, _):
        gain, _, L_inv, log_det = kalman_gain(P_pred, H, R)
        P_filt = joseph(P_pred, gain, H, R)
        P_next = predict_cov(P_filt, A, Sigma)
        G = smoother_gain(P_filt, P_next, A)
        return P_next, (P_pred, P_filt, gain, L_inv, log_det, G, P_next)

    return jax.lax.scan(forward, params.P1, None, length=num_steps)[1]


def _smoothed_covariances(params: LGSSMParams, P_last, P_filt, G):
    """Smoothed covariances and `Cov[x_{k+1}, x_k]` backwards from `P_last` (the smoothed
    covariance after the steps of `P_filt`, `G`)."""

    def backward(P_s_next, xs):
        P_f, G_k = xs
        P_s = smoothed_cov(P_f, P_s_next, G_k, params.A, params.Sigma)
        return P_s, (P_s, P_s_next @ G_k.T)

    return jax.lax.scan(backward, P_last, (P_filt, G), reverse=True)[1]


def steady_covariances(params: LGSSMParams, T: int):
    """The first STEADY_STEPS steps of the forward and backward covariance recursions, and
    whether they converged (`ok`); the gains and sums of smoothed covariances of T steps."""
    A, Sigma = params.A, params.Sigma
    N = STEADY_STEPS
    P_pred, P_filt, gain, L_inv, log_det, G, P_next = _covariance_steps(params, N)
    fwd_ok = steady(P_pred[-1], P_next[-1]) & steady(P_pred[-2], P_pred[-1])

    P_filt_inf, G_inf = P_filt[-1], G[-1]

    def backward_tail(P_s_next, _):
        P_s = smoothed_cov(P_filt_inf, P_s_next, G_inf, A, Sigma)
        return P_s, P_s

    _, tail = jax.lax.scan(backward_tail, P_filt_inf, None, length=N - 1)
    tail = jnp.concatenate([tail[::-1], P_filt_inf[None]])  # steps T-N .. T-1
    P_s_inf = tail[0]
    bwd_ok = steady(tail[1], tail[0])
    head_s, head_cross = _smoothed_covariances(params, P_s_inf, P_filt, G)

    n_mid = T - 2 * N
    # sum_{k=0}^{T-2} Cov[x_{k+1}, x_k] = sum_k P_{k+1} G_k^T; G_k is constant from step N - 1
    after = (n_mid - 1) * P_s_inf + tail.sum(0)  # sum of P_j, j = N+1 .. T-1
    return dict(
        ok=fwd_ok & bwd_ok,
        gain=gain,
        L_inv=L_inv,
        log_det=log_det,
        G=G,
        sum_P=head_s.sum(0) + n_mid * P_s_inf + tail.sum(0),
        sum_cross=head_cross.sum(0) + after @ G_inf.T,
        P_first=head_s[0],
        P_last=tail[-1],
    )


def steady_stats(params: LGSSMParams, y, cov):
    r"""Statistics of B complete sequences (B, T, p) from the steady-state covariances `cov`.

    With the gains fixed, the means obey affine recursions in which y enters only through a
    term computed for all steps at once: the filter's predicted means
    $m_{k+1} = A (I - K_k H) m_k + A K_k (y_k - u)$, and the smoothed means
    $\hat m_k = (m^f_k - G_k m_{k+1}) + G_k \hat m_{k+1}$. Each scan step is then one
    `(B, d) x (d, d)` product and a sum, for all B sequences together; innovations,
    log-likelihoods and filtered means are array operations over all steps afterwards.
    The gains change over the first `STEADY_STEPS` steps and are constant after.
    """
    A, H, u = params.A, params.H, params.u
    B, T, p = y.shape
    d = A.shape[0]
    yt = jnp.swapaxes(y, 0, 1) - u[None, None]  # (T, B, p), time first, less the offset
    gain, G = cov["gain"], cov["G"]  # (N, d, p), (N, d, d)
    N = STEADY_STEPS

    def per_step(x, mats):
        """x_k M_k^T for x (T', B, q), T' >= N: M_k = mats[k] for k < N, mats[-1] after."""
        head = jnp.einsum("tbq,tdq->tbd", x[:N], mats)
        return jnp.concatenate([head, x[N:] @ mats[-1].T])

    def affine(x0, M, c, reverse=False):
        """x_{k+1} = x_k M_k^T + c_k over the steps of c (T', B, d), M as in `per_step`;
        returns the T' states after x0 (before it, with `reverse`: x_k = x_{k+1} M_k^T + c_k)."""

        def step(x, xs):
            k, c_k = xs
            x = x @ M[jnp.minimum(k, N - 1)].T + c_k
            return x, x

        return jax.lax.scan(step, x0, (jnp.arange(c.shape[0]), c), reverse=reverse)[1]

    # forward: predicted means m_0 = mu1, m_1, ..., m_{T-1}
    AK = A @ gain  # (N, d, p)
    closed = A[None] - AK @ H  # A (I - K_k H)
    m0 = jnp.broadcast_to(params.mu1, (B, d))
    m_pred = jnp.concatenate([m0[None], affine(m0, closed, per_step(yt[:-1], AK))])
    innov = yt - m_pred @ H.T  # (T, B, p)
    m_filt = m_pred + per_step(innov, gain)
    white = per_step(innov, cov["L_inv"])
    idx = jnp.minimum(jnp.arange(T), N - 1)
    log_det = jnp.sum(cov["log_det"][idx])
    quad = jnp.einsum("tbp,tbp->b", white, white)
    logliks = -0.5 * (T * p * jnp.log(2.0 * jnp.pi) + log_det + quad)

    # backward: smoothed m_{T-1} = filtered; m_k = (m^f_k - G_k m_{k+1}) + G_k m^s_{k+1}
    c = m_filt[:-1] - per_step(m_pred[1:], G)
    m = jnp.concatenate([affine(m_filt[-1], G, c, reverse=True), m_filt[-1:]])

    sum_P, sum_cross = cov["sum_P"], cov["sum_cross"]
    P_first, P_last = cov["P_first"], cov["P_last"]

    def outer(a, b):  # sum over steps and sequences of a_k b_k^T: one product of (T B, .) rows
        return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])

    y = yt + u[None, None]
    mm, m_first, m_last = outer(m, m), m[0].T @ m[0], m[-1].T @ m[-1]
    sum_m, n = jnp.sum(m, axis=(0, 1)), jnp.asarray(B * T, dtype=y.dtype)
    xx = mm + B * sum_P  # E[xhat xhat^T] with xhat = [x; 1], from the sums of m m^T and m
    xx = jnp.block([[xx, sum_m[:, None]], [sum_m[None], n[None, None]]])
    stats = SufficientStats(
        x1=jnp.sum(m[0], axis=0),
        x1x1=B * P_first + m_first,
        num_sequences=jnp.asarray(B, dtype=y.dtype),
        S00=(B * (sum_P - P_last) + mm - m_last)[None],
        S10=(B * sum_cross + outer(m[1:], m[:-1]))[None],
        S11=(B * (sum_P - P_first) + mm - m_first)[None],
        num_transitions=jnp.asarray([B * (T - 1)], dtype=y.dtype),
        yy=outer(y, y),
        yx=jnp.concatenate([outer(y, m), jnp.sum(y, axis=(0, 1))[:, None]], axis=1),
        xx=xx,
        num_emissions=n,
    )
    return stats, logliks
