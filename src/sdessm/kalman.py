r"""Kalman filter and Rauch-Tung-Striebel smoother, NaN-aware, jittable, vmappable, differentiable.

Missing values: a NaN component of $y_k$ is removed from the update by zeroing its row of $H_k$
and decoupling it in $R_k$ (unit variance, zero covariance with the observed components), so its
innovation is exactly zero and it adds nothing to the gain or, after removing the $\log 2\pi$ term,
to the log-likelihood. A vector may be partly missing.

The filtered covariance uses the Joseph form, and so do the scalar updates of `log_likelihood`
(as a rank-one correction) and the smoothed covariance (`smoothed_cov`); every covariance is
symmetrised; all solves use Cholesky factors, and the log-determinant of the innovation
covariance comes from the same factor. See "Numerical robustness" in docs/conventions.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, ArrayLike, Float

from . import compiled, parallel
from ._checks import concrete, float64
from .discretize import symmetrize
from .params import LGSSMParams, SDEParams
from .problem import Problem, is_complete, resolve, shares_mask
from .recursion import (
    STEADY_STEPS,
    FilterResult,
    SmootherResult,
    decoupled,
    observed_rows,
    predict,
    predict_cov,
    scan_inputs,
    smoothed_cov,
    smoother_gain,
    steady,
    update_rows,
)

# --------------------------------------------------------------------------- single sequence


def _transitions(params: LGSSMParams, T: int):
    """`(A, Sigma)` of the `T - 1` transitions, each `(T-1, d, d)`."""
    tv = params.time_varying()
    steps = (T - 1,)
    A = params.A if tv["A"] else jnp.broadcast_to(params.A, steps + params.A.shape)
    Sigma = params.Sigma if tv["Sigma"] else jnp.broadcast_to(params.Sigma, steps + params.A.shape)
    return A, Sigma


def _filter_rows_core(params: LGSSMParams, y, complete: bool):
    """`_filter_rows` with means time first `(T, b, d)` and covariances `(T, d, d)` once."""
    b, T, _ = y.shape
    shared, per_step, first = scan_inputs(params)
    obs = None if complete else ~jnp.isnan(y[0])
    yt = jnp.swapaxes(y, 0, 1)  # (T, b, p)
    m0 = jnp.broadcast_to(params.mu1, (b,) + params.mu1.shape)
    obs0 = None if complete else obs[0]
    m1, P1, ll1 = update_rows(
        m0, params.P1, first["H"], first["u"], first["R"], yt[0], obs0, complete
    )

    def step(carry, xs):
        m, P = carry
        k, y_k, obs_k = xs
        f = shared | k
        m_pred, P_pred = predict(m, P, f["A"], f["Sigma"])
        m_f, P_f, ll = update_rows(m_pred, P_pred, f["H"], f["u"], f["R"], y_k, obs_k, complete)
        return (m_f, P_f), (m_f, P_f, m_pred, P_pred, ll)

    xs = (per_step, yt[1:], None if complete else obs[1:])
    _, (ms, Ps, m_preds, P_preds, lls) = jax.lax.scan(step, (m1, P1), xs)
    cat = lambda a, rest: jnp.concatenate([a[None], rest])  # noqa: E731
    return FilterResult(
        filtered_means=cat(m1, ms),
        filtered_covs=cat(P1, Ps),
        predicted_means=cat(m0, m_preds),
        predicted_covs=cat(params.P1, P_preds),
        log_likelihood=ll1 + jnp.sum(lls, axis=0),
    )


def _filter_rows(params: LGSSMParams, y, complete: bool = False) -> FilterResult:
    """`filter_sequence` for the `b` sequences `y` `(b, T, p)`, which share the NaN mask of `y[0]`:
    one covariance recursion for all of them, their means propagated together as the rows of a
    `(b, d)` matrix. The covariances are returned broadcast to every sequence."""
    core = _filter_rows_core(params, y, complete)
    b = y.shape[0]
    means = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    covs = lambda a: jnp.broadcast_to(a, (b,) + a.shape)  # noqa: E731
    return FilterResult(
        means(core.filtered_means),
        covs(core.filtered_covs),
        means(core.predicted_means),
        covs(core.predicted_covs),
        core.log_likelihood,
    )


def _smoother_rows_core(params: LGSSMParams, y, complete: bool):
    """`_smoother_rows` with means time first `(T, b, d)` and covariances `(T, d, d)` once."""
    filt = _filter_rows_core(params, y, complete)
    A, Sigma = _transitions(params, y.shape[1])

    def step(carry, xs):
        m_next, P_next = carry  # smoothed moments of x_{k+1}, rows (b, d)
        # filtered x_k; predicted x_{k+1}; the transition x_k -> x_{k+1}
        m_f, P_f, m_pred, P_pred, A_k, Sigma_k = xs
        gain = smoother_gain(P_f, P_pred, A_k)
        m = m_f + (m_next - m_pred) @ gain.T
        P = smoothed_cov(P_f, P_next, gain, A_k, Sigma_k)
        return (m, P), (m, P, P_next @ gain.T)  # Cov[x_{k+1}, x_k | y_{1:T}]

    means_f, means_p = filt.filtered_means, filt.predicted_means
    covs_f, covs_p = filt.filtered_covs, filt.predicted_covs
    last = (means_f[-1], covs_f[-1])
    xs = (means_f[:-1], covs_f[:-1], means_p[1:], covs_p[1:], A, Sigma)
    _, (ms, Ps, crosses) = jax.lax.scan(step, last, xs, reverse=True)
    return SmootherResult(
        smoothed_means=jnp.concatenate([ms, last[0][None]]),
        smoothed_covs=jnp.concatenate([Ps, last[1][None]]),
        cross_covs=crosses,
        log_likelihood=filt.log_likelihood,
    )


def _smoother_rows(params: LGSSMParams, y, complete: bool = False) -> SmootherResult:
    """`smoother_sequence` for sequences that share one NaN mask, as `_filter_rows`."""
    core = _smoother_rows_core(params, y, complete)
    every = lambda a: jnp.broadcast_to(a, (y.shape[0],) + a.shape)  # noqa: E731
    return SmootherResult(
        jnp.swapaxes(core.smoothed_means, 0, 1),
        every(core.smoothed_covs),
        every(core.cross_covs),
        core.log_likelihood,
    )


def filter_sequence(params: LGSSMParams, y, complete: bool = False) -> FilterResult:
    """Kalman filter of one sequence `y` `(T, p)`: `_filter_rows_core` with one row (the
    Joseph-form update of `update_rows`)."""
    core = _filter_rows_core(params, y[None], complete)
    means = lambda a: a[:, 0]  # noqa: E731
    return FilterResult(
        means(core.filtered_means),
        core.filtered_covs,
        means(core.predicted_means),
        core.predicted_covs,
        core.log_likelihood[0],
    )


def smoother_sequence(params: LGSSMParams, y, complete: bool = False) -> SmootherResult:
    """RTS smoother of one sequence `y` `(T, p)`: `_smoother_rows_core` with one row."""
    core = _smoother_rows_core(params, y[None], complete)
    return core._replace(
        smoothed_means=core.smoothed_means[:, 0], log_likelihood=core.log_likelihood[0]
    )


def _scalar_update(P, h):
    r"""Condition the covariance P on one whitened scalar observation $h^\top x + \varepsilon$,
    $\varepsilon \sim N(0, 1)$. Returns `(P after, gain g = P h / s, s = h^T P h + 1)`.

    Joseph form in $O(d^2)$: with $M = (I - g h^\top) P$ (the conventional update),
    $(I - g h^\top) P (I - g h^\top)^\top + g g^\top = M + (g - M h)\, g^\top$. In exact
    arithmetic $M h = g$; in floating point $g - M h$ is the residual of the cancellation in $M$,
    which for small noise ($s \gg 1$) leaves only round-off in the observed direction, possibly
    negative, and then the next $s$ too. The correction removes it to first order (float32 with
    $R = 10^{-10}$ and short steps gave a NaN log-likelihood without it).
    """
    Ph = P @ h
    s = h @ Ph + 1.0
    g = Ph / s
    M = P - jnp.outer(g, Ph)
    return symmetrize(M + jnp.outer(g - M @ h, g)), g, s


def _absorb(P, H_w):
    """Scalar updates of P by the rows of whitened H: (P after, gains P h / s (p, d), s (p,))."""
    gains, ss = [], []
    for i in range(H_w.shape[0]):
        P, g, s = _scalar_update(P, H_w[i])
        gains.append(g)
        ss.append(s)
    return P, jnp.stack(gains), jnp.stack(ss)


def _lift(v, rows):
    """`v` with a leading axis of length 1 when `rows` (a `(b, d)` matrix of means) has one."""
    return v[None] if rows.ndim == 2 else v


def _loglik_steady(A, Sigma, H_w, y_w, mu1, P1, num_steps: int):
    """Log-likelihood of complete whitened data `y_w` `(T, p)`, or `(T, b, p)` for b sequences,
    without the constant, the covariance recursion cut after `num_steps`; returns
    `(value () or (b,), converged)`."""

    def cov_step(P, _):
        P_f, g, s = _absorb(P, H_w)
        return predict_cov(P_f, A, Sigma), (g, s, P)

    P_n, (gains, ss, Ps) = jax.lax.scan(cov_step, P1, None, length=num_steps)
    converged = steady(Ps[-1], P_n)
    _, g_inf, s_inf = _absorb(P_n, H_w)
    rest = y_w.shape[0] - num_steps
    gains = jnp.concatenate([gains, jnp.broadcast_to(g_inf, (rest,) + g_inf.shape)])
    inv_s = jnp.concatenate([1.0 / ss, jnp.broadcast_to(1.0 / s_inf, (rest,) + s_inf.shape)])
    log_det = jnp.sum(jnp.log(ss)) + rest * jnp.sum(jnp.log(s_inf))

    def mean_step(m, xs):  # rows of m (b, d), if any, share the gains
        g_k, inv_s_k, y_k = xs
        quad = jnp.zeros(y_k.shape[:-1], y_k.dtype)
        for i in range(H_w.shape[0]):
            e = y_k[..., i] - m @ H_w[i]
            m = m + e[..., None] * _lift(g_k[i], m)
            quad = quad + e * e * inv_s_k[i]
        return m @ A.T, quad

    m0 = jnp.broadcast_to(mu1, y_w.shape[1:-1] + mu1.shape)
    _, quads = jax.lax.scan(mean_step, m0, (gains, inv_s, y_w))
    # summed at the end, not as a running total: see `full` in `loglik_sequence`
    return -0.5 * (log_det + jnp.sum(quads, axis=0)), converged


def loglik_sequence(params: LGSSMParams, y, complete: bool = False):
    r"""$\log p(y_{1:T})$ alone: the fast path for autodiff (NUTS, observed information).

    The observations are whitened by the Cholesky factor $C$ of $R$ ($C^{-1}(y - u)$,
    $C^{-1} H$, unit noise) and their components are absorbed one at a time by scalar updates
    (`_scalar_update`, Joseph form in rank-one corrections): no matrix factorisation inside the
    recursion (for complete data $C$ is computed once) and no moments kept. Complete data on
    uniform steps longer than `2 * STEADY_STEPS` take the steady-state form when the
    Riccati recursion has converged (checked at run time; otherwise the full recursion runs).
    Emissions that vary per step fall back to the Joseph-form filter.

    `y` is one sequence `(T, p)`, or `b` sequences `(b, T, p)` that share the NaN mask of `y[0]`
    (value `(b,)`): one covariance recursion for all, their means the rows of a `(b, d)` matrix.
    """
    tv = params.time_varying()
    rows = y.ndim == 3
    if tv["H"] or tv["u"] or tv["R"]:
        filt = _filter_rows_core if rows else filter_sequence
        return filt(params, y, complete).log_likelihood
    H, u, R = params.H, params.u, params.R
    T, p = y.shape[-2:]
    d = H.shape[1]
    log_2pi = jnp.log(2.0 * jnp.pi)
    yt = jnp.swapaxes(y, 0, 1) if rows else y  # time first
    obs = None if complete else ~jnp.isnan(y[0] if rows else y)

    def whiten(y_k, obs_k):
        """(C^{-1} H, C^{-1} (y_k - u) (of each row), log|C| + n_obs log(2 pi) / 2) on the
        observed entries."""
        H_k, R_k = observed_rows(H, obs_k), decoupled(R, obs_k)
        e = jnp.where(_lift(obs_k, y_k), y_k - _lift(u, y_k), 0.0)
        C = jnp.linalg.cholesky(R_k)
        n_obs = jnp.sum(obs_k).astype(y_k.dtype)
        const = jnp.sum(jnp.log(jnp.diagonal(C))) + 0.5 * n_obs * log_2pi
        W = solve_triangular(C, jnp.concatenate([H_k, e.reshape(-1, p).T], axis=1), lower=True)
        return W[:, :d], W[:, d:].T.reshape(e.shape), const

    if complete:  # one factorisation for all steps
        C = jnp.linalg.cholesky(R)
        H_w = solve_triangular(C, H, lower=True)
        e = yt - (u[None, None] if rows else u[None])
        y_w = solve_triangular(C, e.reshape(-1, p).T, lower=True).T.reshape(e.shape)
        const = jnp.sum(jnp.log(jnp.diagonal(C))) + 0.5 * p * log_2pi

    def update(m, P, y_k, obs_k):
        H_k, e_w, c = (H_w, y_k, const) if complete else whiten(y_k, obs_k)
        ll = -c
        for i in range(p):  # scalar updates, unit noise
            e = e_w[..., i] - m @ H_k[i]
            P, g, s = _scalar_update(P, H_k[i])
            m = m + e[..., None] * _lift(g, m)
            ll = ll - 0.5 * (jnp.log(s) + e * e / s)
        return m, P, ll

    y_in = y_w if complete else yt
    shared, per_step, _ = scan_inputs(params)

    def full():
        m0 = jnp.broadcast_to(params.mu1, y_in.shape[1:-1] + (d,))
        m, P, ll = update(m0, params.P1, y_in[0], None if complete else obs[0])

        def step(carry, xs):
            m, P = carry
            k, y_k, obs_k = xs
            f = shared | k
            m, P, ll = update(*predict(m, P, f["A"], f["Sigma"]), y_k, obs_k)
            return (m, P), ll

        # summed by `jnp.sum` at the end, not as a running total in the carry: in float32 such a
        # total over 1000 steps lost ~1e-6 of its value
        xs = (per_step, y_in[1:], None if complete else obs[1:])
        _, lls = jax.lax.scan(step, (m, P), xs)
        return ll + jnp.sum(lls, axis=0)

    if not complete or tv["A"] or tv["Sigma"] or T <= 2 * STEADY_STEPS:
        return full()
    value, converged = _loglik_steady(
        params.A, params.Sigma, H_w, y_w, params.mu1, params.P1, STEADY_STEPS
    )
    return jax.lax.cond(converged, lambda: value - T * const, full)


# --------------------------------------------------------------------------- compiled kernels


def _compiled_applies(params: LGSSMParams, y) -> bool:
    """Whether the compiled kernels run this sequence (no input gains left in `params`)."""
    return params.B is None and params.D is None and compiled.applies(params, y)


def _reference_jvp(name: str, kernel, reference):
    """`kernel(params, y, complete)` for values, its derivatives (of every order) from
    `reference`, the pure-JAX recursion of the same quantity."""
    fn = jax.custom_jvp(kernel, nondiff_argnums=(2,))

    @fn.defjvp
    def jvp(complete, primals, tangents):
        return jax.jvp(lambda p, y: reference(p, y, complete), primals, tangents)

    fn.__name__ = fn.__qualname__ = name
    return fn


def _kernel_filter(params, y, complete):
    ll, a, P, af, Pf = compiled.filter_moments(compiled.arguments(params), y)
    return FilterResult(af, Pf, a, P, ll)


def _kernel_smoother(params, y, complete):
    ll, means, covs, cross = compiled.smoother_moments(compiled.arguments(params), y)
    return SmootherResult(means, covs, cross, ll)


_filter_kernel = _reference_jvp("_filter_kernel", _kernel_filter, filter_sequence)
_smoother_kernel = _reference_jvp("_smoother_kernel", _kernel_smoother, smoother_sequence)


def _grad_from_kernel(params: LGSSMParams, y, complete):
    """`(log p(y), gradient with respect to params (an LGSSMParams), gradient with respect to
    y)` from the compiled backward recursion; the emission offset is passed per step, whose
    gradient (the smoothed scaled observation errors) also gives the one with respect to `y`."""
    T = y.shape[0]
    args = list(compiled.arguments(params))
    args[3] = jnp.broadcast_to(args[3], (T,) + args[3].shape[1:])
    value, (gA, gQ, gH, gu, gR, gmu1, gP1) = compiled.loglik_grad(tuple(args), y)
    tv = params.time_varying()
    pick = lambda g, k: g if tv[k] else g[0]  # noqa: E731
    grads = params._replace(
        A=pick(gA, "A"),
        Sigma=pick(gQ, "Sigma"),
        H=pick(gH, "H"),
        u=gu if tv["u"] else jnp.sum(gu, axis=0),
        R=pick(gR, "R"),
        mu1=gmu1,
        P1=gP1,
    )
    return value, grads, -gu


_loglik_grad_kernel = _reference_jvp(
    "_loglik_grad_kernel",
    _grad_from_kernel,
    lambda p, y, complete: (
        loglik_sequence(p, y, complete),
        *jax.grad(loglik_sequence, argnums=(0, 1))(p, y, complete),
    ),
)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _loglik_kernel(params, y, complete):
    return compiled.loglik(compiled.arguments(params), y)


@functools.partial(_loglik_kernel.defjvp, symbolic_zeros=True)
def _loglik_kernel_jvp(complete, primals, tangents):
    """First derivatives from the compiled gradient (the tangent is linear in the inputs'
    tangents, so reverse mode transposes it); higher ones from `_loglik_grad_kernel`'s."""
    params, y = primals
    d_params, d_y = tangents
    value, g_params, g_y = _loglik_grad_kernel(params, y, complete)
    pairs = list(zip(jax.tree.leaves(g_params), jax.tree.leaves(d_params), strict=True))
    pairs.append((g_y, d_y))
    zero = jax.custom_derivatives.SymbolicZero
    terms = [jnp.vdot(g, t) for g, t in pairs if not isinstance(t, zero)]
    return value, sum(terms) if terms else jnp.zeros_like(value)


#: From this many sequences that share the parameters and one NaN mask, `"auto"` and
#: `"compiled"` compute values (filter, smoother, log-likelihood) by the sequential path's one
#: covariance recursion for all of them (the rows of `_filter_rows`), which then costs less than
#: the kernel's recursion per sequence (measured, d = 2 to 8, one core: the kernel is 2 to 8
#: times faster at 8 sequences, level at 32 to 128, slower from there); the log-likelihood's
#: gradient is the kernel's whatever the number.
ROWS_FROM = 64


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _loglik_rows_kernel(params, y, complete):
    """`loglik_sequence` of the rows `y` `(b, T, p)` (one shared recursion) with the kernel's
    first derivatives, sequence by sequence."""
    return loglik_sequence(params, y, complete)


@functools.partial(_loglik_rows_kernel.defjvp, symbolic_zeros=True)
def _loglik_rows_kernel_jvp(complete, primals, tangents):
    params, y = primals
    d_params, d_y = tangents

    def one(y_b, d_y_b):
        return _loglik_kernel_jvp(complete, (params, y_b), (d_params, d_y_b))

    if isinstance(d_y, jax.custom_derivatives.SymbolicZero):
        return jax.vmap(lambda y_b: one(y_b, d_y))(y)
    return jax.vmap(one)(y, d_y)


def _loglik_rows_compiled(params: LGSSMParams, y, complete: bool = False):
    """`loglik_sequence` on rows, its gradient by the kernel where it applies."""
    if not _compiled_applies(params, y[0]):
        return loglik_sequence(params, y, complete)
    return _loglik_rows_kernel(params, y, complete)


def filter_sequence_compiled(params: LGSSMParams, y, complete: bool = False) -> FilterResult:
    """`filter_sequence` by the compiled kernel where it applies (`sdessm.compiled`)."""
    if not _compiled_applies(params, y):
        return filter_sequence(params, y, complete)
    return _filter_kernel(params, y, complete)


def smoother_sequence_compiled(params: LGSSMParams, y, complete: bool = False) -> SmootherResult:
    """`smoother_sequence` by the compiled kernel where it applies."""
    if not _compiled_applies(params, y):
        return smoother_sequence(params, y, complete)
    return _smoother_kernel(params, y, complete)


def loglik_sequence_compiled(params: LGSSMParams, y, complete: bool = False):
    """`loglik_sequence` by the compiled kernel where it applies; its first derivatives by the
    compiled backward recursion, higher ones by the pure-JAX recursion."""
    if not _compiled_applies(params, y):
        return loglik_sequence(params, y, complete)
    return _loglik_kernel(params, y, complete)


# --------------------------------------------------------------------------- public boundary


def map_sequences(fn, params, y, params_batched, complete: bool | None = None):
    """Apply a single-sequence `fn(params, y, complete)` to `(T, p)` or `(B, T, p)` data.

    `complete` defaults to `is_complete(y)`.
    """
    complete = is_complete(y) if complete is None else complete
    same_mask = complete or shares_mask(y)
    return map_sequences_jit(fn, params, y, params_batched, complete, same_mask)


def run(fn, problem: Problem, complete: bool | None = None):
    """`map_sequences` on a resolved `Problem`, with its flags (`complete` overrides its own)."""
    complete = problem.complete if complete is None else complete
    same_mask = complete or problem.same_mask
    return map_sequences_jit(
        fn, problem.params, problem.y, problem.params_batched, complete, same_mask
    )


@functools.partial(jax.jit, static_argnames=("fn", "params_batched", "complete", "same_mask"))
def map_sequences_jit(fn, params, y, params_batched, complete, same_mask: bool = False):
    """One compiled program per (fn, shapes, flags), reused by every later call: without the
    jit each call would trace and compile its scans anew.

    Sequences that share the parameters and one NaN mask (`same_mask`, static) share one
    covariance recursion (`_filter_rows`, `_smoother_rows`, `loglik_sequence` on `(b, T, p)`);
    with the compiled kernels, from `ROWS_FROM` sequences on.
    """
    one = functools.partial(fn, complete=complete)
    if y.ndim == 2:
        return one(params, y)
    rows = {
        filter_sequence: _filter_rows,
        smoother_sequence: _smoother_rows,
        loglik_sequence: loglik_sequence,
    }
    kernels = {
        filter_sequence_compiled: _filter_rows,
        smoother_sequence_compiled: _smoother_rows,
        loglik_sequence_compiled: _loglik_rows_compiled,
    }
    if fn in kernels and y.shape[0] >= ROWS_FROM:
        rows = kernels
    rows = rows.get(fn)
    if rows is not None and same_mask and not params_batched:
        return rows(params, y, complete)
    axes = LGSSMParams(0, 0, None, None, None, None, None) if params_batched else None
    return jax.vmap(one, in_axes=(axes, 0))(params, y)


_METHODS = ("auto", "compiled", "sequential", "parallel")


def _single_sequence(kind: str, method: str):
    """The single-sequence function of `kind` ("filter", "smoother", "loglik") for `method`."""
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(
            f'`method` must be "auto", "compiled", "sequential" or "parallel"; got {method!r}.'
        )
    if method == "compiled" and not compiled.available():
        raise ValueError(
            f'`method="compiled"`: {compiled.why_unavailable()}; use "auto" or "sequential".'
        )
    if method in ("auto", "compiled"):
        return {
            "filter": filter_sequence_compiled,
            "smoother": smoother_sequence_compiled,
            "loglik": loglik_sequence_compiled,
        }[kind]
    if method == "sequential":
        return {
            "filter": filter_sequence,
            "smoother": smoother_sequence,
            "loglik": loglik_sequence,
        }[kind]
    return {
        "filter": parallel.filter_sequence_parallel,
        "smoother": parallel.smoother_sequence_parallel,
        "loglik": parallel.loglik_sequence_parallel,
    }[kind]


@float64
def kalman_filter(
    params: LGSSMParams | SDEParams,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, "*#B T"] | None = None,
    *,
    dt: float | None = None,
    inputs: Float[ArrayLike, "*#B T m"] | None = None,
    method: str = "auto",
) -> FilterResult:
    r"""Kalman filter: filtered and one-step predicted state moments and $\log p(y_{1:T})$.

    Args:
        params: an `LGSSMParams` (time-invariant or with per-step `A`, `Sigma`, `H`, `u`, `R`), or
            an `SDEParams` together with `times` or `dt`, discretised exactly.
        y: observations `(T, p)` or `(B, T, p)`; NaN marks a missing value.
        times: observation times `(T,)` shared by all sequences, or `(B, T)`; `SDEParams` only.
        dt: a uniform step instead of `times`; `SDEParams` only.
        inputs: known inputs `(T, m)` shared by the sequences, or `(B, T, m)`, when `params`
            has the input gains `B` (drift) or `D` (observations); held constant from each
            observation time to the next (zero-order hold). Finite everywhere.
        method: `"auto"` (the default): `"compiled"` where it applies, else `"sequential"`.
            `"compiled"`: the compiled CPU kernel (`sdessm.compiled`: float64 on a CPU, at least
            two steps; otherwise it falls back to `"sequential"`; an error if the kernel was
            not built), 10 to 30 times faster than the scan on a CPU; its derivatives come from
            the sequential recursion. `"sequential"`: a `lax.scan` over time. `"parallel"`: an
            associative scan (`sdessm.parallel`): $O(\log T)$ sequential depth instead of $T$,
            for a constant factor more work (still $O(T)$) and a longer compilation; the path
            for GPUs and TPUs and long sequences. All give the same result to round-off.

    Returns:
        A `FilterResult`; `log_likelihood` has shape `()` or `(B,)` (one per sequence).

    Raises:
        ValueError: `method` is not one of `"auto"`, `"compiled"`, `"sequential"` and
            `"parallel"`, or `"compiled"` where the kernel is unavailable, or an argument has a
            wrong shape or value.

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
        >>> res = sdessm.kalman_filter(rw, jnp.array([[jnp.nan]]), dt=1.0)  # nothing observed
        >>> float(res.log_likelihood) == 0.0, res.filtered_covs.tolist()
        (True, [[[1.0]]])
    """
    fn = _single_sequence("filter", method)
    problem = resolve(params, y, times, dt, inputs)
    result = run(fn, problem)
    if problem.offset is None:
        return result
    return result._replace(
        filtered_means=result.filtered_means + problem.offset,
        predicted_means=result.predicted_means + problem.offset,
    )


@float64
def log_likelihood(
    params: LGSSMParams | SDEParams,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, "*#B T"] | None = None,
    *,
    dt: float | None = None,
    inputs: Float[ArrayLike, "*#B T m"] | None = None,
    method: str = "auto",
    complete: bool | None = None,
) -> Float[Array, "*B"]:
    r"""$\log p(y_{1:T})$ of each sequence, the states marginalised: `kalman_filter`'s value,
    computed without the moments. Arguments as for `kalman_filter`.

    With the compiled kernel (`method="auto"` where it applies, or `"compiled"`) the gradient
    is not reverse-mode through the recursion but one backward pass of the kernel (de Jong's
    smoothing recursion; Fisher's identity), so `jax.grad` costs about two filters; derivatives
    of higher order (`jax.hessian`) come from the sequential recursion. `"sequential"`
    conditions on one whitened observation at a time and is about ten times cheaper to
    differentiate than the filter; `"parallel"` is the parallel filter's value
    (`sdessm.parallel`: $O(\log T)$ depth, a constant factor more $O(T)$ work, for GPUs).

    Data without NaN take a faster path without masks. `complete`: None (default) decides from
    `y`: at once when `y` is concrete, else (a traced `y`, e.g. an argument of a jitted
    function) at run time by `lax.cond`, so that `jax.jit(jax.value_and_grad(f))(theta, y)`
    is as fast as with `y` closed over (under `vmap` over `y` both paths run: pass
    `complete`). True promises that `y` has no NaN (checked when `y` is concrete); False takes
    the masked path.

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
        >>> y = jnp.array([[0.5], [jnp.nan], [1.0]])
        >>> bool(jnp.isclose(sdessm.log_likelihood(rw, y, dt=1.0),
        ...                  sdessm.kalman_filter(rw, y, dt=1.0).log_likelihood))
        True
    """
    fn = _single_sequence("loglik", method)
    if complete not in (None, True, False):
        raise ValueError(f"`complete` must be None, True or False; got {complete!r}.")
    traced = concrete(y) is None
    problem = resolve(params, y, times, dt, inputs)
    if complete and not traced and not problem.complete:
        raise ValueError("`complete=True` promises no NaN in `y`, but `y` holds NaN.")
    if complete is None and traced:  # which path is decided when it runs

        def path(flag):
            return lambda: run(fn, problem, flag)

        return jax.lax.cond(jnp.isnan(problem.y).any(), path(False), path(True))
    return run(fn, problem, complete)


@float64
def rts_smoother(
    params: LGSSMParams | SDEParams,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, "*#B T"] | None = None,
    *,
    dt: float | None = None,
    inputs: Float[ArrayLike, "*#B T m"] | None = None,
    method: str = "auto",
) -> SmootherResult:
    r"""Rauch-Tung-Striebel smoother: $p(x_k \mid y_{1:T})$, lag-one cross-covariances, log-lik.

    Arguments as for `kalman_filter`; the compiled kernel (`"auto"`, `"compiled"`) computes the
    smoothed moments by de Jong's backward recursion, equal to the RTS form to round-off;
    `method="parallel"` runs the filter and the smoother as associative scans
    (`sdessm.parallel`): $O(\log T)$ depth for a constant factor more $O(T)$ work, the path for
    GPUs.

    Returns:
        A `SmootherResult`: smoothed means `(*B, T, d)` and covariances `(*B, T, d, d)`,
        `cross_covs[k]` $= \mathrm{Cov}[x_{k+1}, x_k \mid y_{1:T}]$ `(*B, T-1, d, d)`, and the
        log-likelihood of each sequence.

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
        >>> y = jnp.array([[1.0], [jnp.nan], [3.0]])
        >>> res = sdessm.rts_smoother(rw, y, dt=1.0)
        >>> bool(jnp.isclose(res.smoothed_means[1, 0], 11 / 7))   # E[x_2 | y_1, y_3] by hand
        True
    """
    fn = _single_sequence("smoother", method)
    problem = resolve(params, y, times, dt, inputs)
    result = run(fn, problem)
    if problem.offset is None:
        return result
    return result._replace(smoothed_means=result.smoothed_means + problem.offset)
