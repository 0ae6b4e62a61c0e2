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

A time step that is entirely NaN adds no emission statistic: as latent observations its values
would only pull H, u and R toward their current values (the same fixed points, reached more
slowly). Its transitions stay: the state still moves. (With per-step emissions the latent
treatment stays, so that a step no sequence observes keeps its H_k, u_k, R_k.) Trailing steps
that are entirely NaN are padding: they add no emission and no transition either, so padded and
unpadded data give the same statistics.

How they are computed: the covariances, gains and log-determinants of the filter and smoother
depend on the parameters and the NaN mask, not on the values of y. Sequences that share one mask
(all of them when the data are complete) therefore share one covariance recursion, and their
means are propagated together as the rows of a `(B, d)` matrix; a sequence with a mask of its
own runs its own recursion. The forward (filter) pass also computes the RTS gains; the backward
pass adds up the covariance parts of the statistics as it goes, so no `(T, d, d)` array of
smoothed or cross covariances is kept, and the sums of products of the means are one matrix
product over the smoothed means. Long complete data on uniform steps take the steady-state
shortcut at the end of this module.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .discretize import symmetrize
from .params import LGSSMParams
from .problem import shares_mask
from .recursion import (
    SufficientStats,
    decoupled,
    observed_rows,
    predict,
    scan_inputs,
    smoothed_cov,
    smoother_gain,
    update_rows,
)
from .steady import steady_covariances, steady_state_applies, steady_stats


def conditional_emission(H, u, R, y):
    """Moments of the completed `y` given x and its observed entries: `y = G x + c + e`, Cov e.

    For a fully observed `y`: `G = 0`, `c = y`, `Cov e = 0`; fully missing: `G = H`, `c = u`,
    `Cov e = R`. No branching: the masked identities below reduce to those blocks.
    """
    obs = ~jnp.isnan(y)
    M, G, cov = _emission_given_mask(H, R, obs)
    return G, u + M @ jnp.where(obs, y - u, 0.0), cov  # observed entries of c: y


def _emission_given_mask(H, R, obs):
    """The parts of `conditional_emission` that depend only on the mask `obs`: `(M, G, Cov e)`,
    with `M = R[:, o] R_oo^{-1}` on the observed columns and 0 on the missing ones."""
    chol = jnp.linalg.cholesky(decoupled(R, obs))  # of blockdiag(R_oo, I)
    # M = R[:, o] R_oo^{-1} on observed columns, 0 on missing ones (so M[o, o] = I)
    M = jax.scipy.linalg.cho_solve((chol, True), jnp.where(obs[None, :], R, 0.0).T).T
    H_o = observed_rows(H, obs)
    G = H - M @ H_o  # rows of observed entries vanish
    cov = R - M @ jnp.where(obs[:, None], R, 0.0)
    return M, G, symmetrize(cov)


#: Missing values with shared `H`, `R`: the emission moments given the mask are tabulated for all
#: `2^p` masks (instead of computed at each step) when `p` is at most this and `2^p <= T`.
MASK_TABLE_MAX_DIM = 12


def _emission_tables(params: LGSSMParams, obs, w_emit):
    """`(M, G, Cov e)` of `_emission_given_mask` as tables, the index of each step's entry `(T,)`,
    and the summed emission weight `w_emit` of each entry.

    With shared `H`, `R` and `2^p <= T`, one entry per possible mask (bit `i` of the index set
    when component `i` is observed): `2^p` small factorisations instead of `T`, and no `(T, p, p)`
    arrays. Otherwise one entry per step.
    """
    T, p = obs.shape
    tv = params.time_varying()
    if not (tv["H"] or tv["R"]) and p <= MASK_TABLE_MAX_DIM and 2**p <= T:
        bits = jnp.arange(p, dtype=jnp.int32)
        masks = ((jnp.arange(2**p, dtype=jnp.int32)[:, None] >> bits[None]) & 1) == 1
        tables = jax.vmap(_emission_given_mask, in_axes=(None, None, 0))(params.H, params.R, masks)
        ids = jnp.sum(obs.astype(jnp.int32) << bits[None], axis=1)
        return tables, ids, jax.ops.segment_sum(w_emit, ids, 2**p)
    axes = (0 if tv["H"] else None, 0 if tv["R"] else None, 0)
    tables = jax.vmap(_emission_given_mask, in_axes=axes)(params.H, params.R, obs)
    return tables, jnp.arange(T), w_emit


def _padding_weights(obs, dtype):
    """Weights `(T,)` of the emissions and `(T-1,)` of the transitions of a sequence whose
    observed entries are `obs` `(T, p)`: 0 on its trailing all-NaN rows (padding), else 1."""
    T = obs.shape[0]
    observed_rows = jnp.any(obs, axis=-1)
    length = T - jnp.argmax(observed_rows[::-1])  # 1 + index of the last observed row
    length = jnp.where(jnp.any(observed_rows), length, T)
    w_emit = (jnp.arange(T) < length).astype(dtype)
    w_trans = (jnp.arange(T - 1) < length - 1).astype(dtype)
    return w_emit, w_trans


def _wsum(w, a, c):
    """`sum_t w_t a_t^T c_t` over rows `a` `(T, b, i)`, `c` `(T, b, j)`: one matrix product in
    float64; in lower precision a fused reduction, which stays accurate over 10^6 rows (a product
    with few columns accumulates them one after another)."""
    if w is not None:
        a = a * w[:, None, None]
    if jnp.finfo(a.dtype).bits < 64:
        return jnp.sum(a[..., :, None] * c[..., None, :], axis=(0, 1))
    return a.reshape(-1, a.shape[-1]).T @ c.reshape(-1, c.shape[-1])


def _scaled(w, x):
    return x if w is None else w * x


def _add(acc, x, compensate: bool, index=None):
    """`acc + x`, or `acc[index] + x` when `index` is given. With `compensate`, `acc` is a pair
    (sum, compensation) and the addition is Kahan's: a running sum over 10^6 steps in float32
    then keeps the accuracy of a reduction (a plain one lost ~1e-4 of its value)."""
    if not compensate:
        return acc + x if index is None else acc.at[index].add(x)
    total, comp = acc
    if index is None:
        y = x - comp
        new = total + y
        return new, (new - total) - y
    y = x - comp[index]
    new = total[index] + y
    return total.at[index].set(new), comp.at[index].set((new - total[index]) - y)


def _forward(params: LGSSMParams, yt, obs, complete: bool, drive=None):
    """The filter pass of `_mask_stats` over the rows `yt` `(T, b, p)` (time first), which share
    the NaN mask `obs` `(T, p)`: `(filtered x_T, per step k < T (filtered m_k, P_k, predicted
    m_{k+1}, RTS gain of x_k on x_{k+1}), log-likelihood of each row (b,))`. It computes the RTS
    gains too: they need covariances only. `drive` `(T-1, b, d)` (or None) is added to the
    predicted means: the inputs' `B_k v_k`."""
    shared, steps, first = scan_inputs(params)

    def update(m, P, f, y_k, obs_k):
        return update_rows(m, P, f["H"], f["u"], f["R"], y_k, obs_k, complete)

    def forward(carry, xs):
        m, P = carry  # filtered x_{k-1}
        k, y_k, obs_k, c_k = xs
        f = shared | k
        m_pred, P_pred = predict(m, P, f["A"], f["Sigma"])
        m_pred = m_pred if c_k is None else m_pred + c_k
        gain = smoother_gain(P, P_pred, f["A"])  # RTS gain of x_{k-1} on x_k
        m_f, P_f, ll = update(m_pred, P_pred, f, y_k, obs_k)
        return (m_f, P_f), (m, P, m_pred, gain, ll)

    m0 = jnp.broadcast_to(params.mu1, (yt.shape[1], params.mu1.shape[-1]))
    obs0, obs_rest = (None, None) if complete else (obs[0], obs[1:])
    m1, P1, ll1 = update(m0, params.P1, first, yt[0], obs0)
    last, fwd = jax.lax.scan(forward, (m1, P1), (steps, yt[1:], obs_rest, drive))
    return last, fwd[:4], ll1 + jnp.sum(fwd[-1], axis=0)


def _transition_sums(S, ms, m_all, w_trans, groups, num_groups: int, complete: bool, v=None):
    """`(S00, S10, S11, num_transitions)` from the covariance parts `S` summed by the backward
    pass (with the means already in, per group, when `num_groups > 1`) and the smoothed means
    `m_all` `(T, b, d)` (`ms` = `m_all[:-1]`). With the inputs `v` `(T-1, b, m)` driving the
    transitions, the regressor of $x_{k+1}$ is $[x_k; v_k]$: `S00` is `(d+m, d+m)` and `S10`
    `(d, d+m)` (the grouped sums came augmented and padded from the backward pass)."""
    T, b, d = m_all.shape
    dtype = m_all.dtype
    if num_groups > 1:
        w_g = jnp.ones((T - 1,), dtype) if complete else w_trans
        return (S[:, 0], S[:, 1, :d], S[:, 2, :d, :d],
                b * jax.ops.segment_sum(w_g, groups, num_groups))  # fmt: skip
    m = 0 if v is None else v.shape[-1]
    a = ms if v is None else jnp.concatenate([ms, v], axis=-1)  # the regressors
    S00 = (b * jnp.pad(S[0], ((0, m), (0, m))) + _wsum(w_trans, a, a))[None]
    S10 = (b * jnp.pad(S[1], ((0, 0), (0, m))) + _wsum(w_trans, m_all[1:], a))[None]
    S11 = (b * S[2] + _wsum(w_trans, m_all[1:], m_all[1:]))[None]
    n_trans = jnp.full((1,), b * (T - 1) if complete else b * jnp.sum(w_trans), dtype)
    return S00, S10, S11, n_trans


def _emission_sums(Ey, m_all, P_e, J_parts, missing_cov, w_emit, per_step: bool, v=None):
    r"""`(yy, yx, xx, num_emissions)` from E[y] `(T, b, p)`, the smoothed means `m_all`
    `(T, b, d)` and the covariance parts summed over the steps (or per step `(T, ...)`, with
    `per_step`): `P_e` of E[x x^T], `J_parts` = (J P, J P J^T) and `missing_cov` (Cov e of the
    missing entries) of E[y x^T], E[y y^T]; the last two None for complete data. The regressor
    is $\hat x = [x; 1]$, or $[x; 1; v]$ with the inputs `v` `(T, b, m)` of the observations."""
    T, b = m_all.shape[:2]
    xhat = [m_all, jnp.ones((T, b, 1), m_all.dtype)] + ([] if v is None else [v])
    xhat = jnp.concatenate(xhat, axis=2)
    extra = 1 + (0 if v is None else v.shape[-1])  # known columns: no covariance part
    lead = [(0, 0)] * (P_e.ndim - 2)  # the step axis, with `per_step`
    if per_step:  # sums over the b sequences at each step, weighted after
        yy, yx, xx = (
            jnp.einsum("tbp,tbq->tpq", a, c) for a, c in ((Ey, Ey), (Ey, xhat), (xhat, xhat))
        )
    else:
        yy, yx, xx = (_wsum(w_emit, a, c) for a, c in ((Ey, Ey), (Ey, xhat), (xhat, xhat)))
    xx = xx + jnp.pad(b * P_e, lead + [(0, extra), (0, extra)])
    if J_parts is not None:
        yy = yy + b * (J_parts[1] + missing_cov)
        yx = yx + jnp.pad(b * J_parts[0], lead + [(0, 0), (0, extra)])
    if per_step and w_emit is not None:
        yy, yx, xx = (w_emit[:, None, None] * a for a in (yy, yx, xx))
    n = jnp.ones((T,), m_all.dtype) if w_emit is None else w_emit
    return yy, yx, xx, b * (n if per_step else jnp.sum(n))


def _emission(tables, m, P, u, y_k, obs_k, i):
    """E[y_k] of each row `(b, p)`, and the covariance parts of the emission statistics: `P` of
    E[x x^T], `J P` of E[y x^T], `J P J^T` of E[y y^T] (`J = G` of `conditional_emission`,
    looked up in the `tables` at `i`; None for complete data, where E[y_k] = y_k)."""
    if tables is None:
        return y_k, (P,)
    M, J = tables[0][i], tables[1][i]
    JP = J @ P
    c = u[None] + jnp.where(obs_k[None], y_k - u[None], 0.0) @ M.T
    return m @ J.T + c, (P, JP, JP @ J.T)


def _accumulators(num_groups: int, d: int, p: int, per_step: bool, complete: bool, dtype,
                  compensate: bool, m: int = 0) -> dict:  # fmt: skip
    """Zero running sums of the backward pass: the transition parts `S` (per group when
    `num_groups > 1`, augmented with the `m` inputs of the transitions) and, unless `per_step`,
    the emission parts; (sum, compensation) pairs with `compensate` (`_add`)."""

    def zeros(*shape):
        z = jnp.zeros(shape, dtype)
        return (z, z) if compensate else z

    grouped = zeros(num_groups, 3, d + m, d + m)
    acc = {"S": grouped if num_groups > 1 else zeros(3, d, d)}
    if not per_step:
        acc["emit"] = [zeros(d, d)] if complete else [zeros(d, d), zeros(p, d), zeros(p, p)]
    return acc


def _mask_stats(params: LGSSMParams, y, groups, num_groups: int, per_step: bool, complete,
                v=None):  # fmt: skip
    """Statistics of the `b` sequences `y` `(b, T, p)`, which share one NaN mask (that of `y[0]`),
    summed over them, and the log-likelihood of each `(b,)`. `v` `(b, T, m)`: their known
    inputs, for a model with input gains `B` and/or `D` (see `expected_stats`).

    The covariances, gains and log-determinants of the filter and smoother depend on the
    parameters and the mask only, so one recursion on `d x d` matrices serves all `b` sequences;
    their means travel together as the rows of `(b, d)` matrices. The forward pass also computes
    the RTS gains (they need covariances only); the backward pass adds up the statistics as it
    goes, so no `(T, d, d)` array of smoothed or cross covariances is formed. Sums of mean outer
    products are one matrix product over the `(T, b, d)` smoothed means.

    `complete` (static) promises that `y` has no NaN (no masks, no padding).
    """
    b, T, p = y.shape
    d = params.mu1.shape[-1]
    dtype = y.dtype
    yt = jnp.swapaxes(y, 0, 1)  # (T, b, p): time first, for the scans
    y_given, drive, v_trans, v_emit, shift = yt, None, None, None, 0.0
    if v is not None:  # B_k v_k into x_{k+1}; D_k v_k taken out of y_k, put back into E[y]
        vt = jnp.swapaxes(v, 0, 1)  # (T, b, m)
        if params.B is not None:
            v_trans = vt[:-1]
            drive = jnp.einsum("tbm,dm->tbd" if params.B.ndim == 2 else "tbm,tdm->tbd",
                               v_trans, params.B)  # fmt: skip
        if params.D is not None:
            v_emit = vt
            shift = jnp.einsum("tbm,pm->tbp" if params.D.ndim == 2 else "tbm,tpm->tbp",
                               vt, params.D)  # fmt: skip
            yt = yt - shift
    if complete:
        obs = obs_rest = obs0 = w_emit = w_trans = w_rest = ids_rest = id0 = None
    else:
        obs = ~jnp.isnan(y[0])
        obs_rest, obs0 = obs[1:], obs[0]
        w_emit, w_trans = _padding_weights(obs, dtype)
        if not per_step:  # an all-NaN step adds no emission statistic (module docstring)
            w_emit = w_emit * jnp.any(obs, axis=-1).astype(dtype)
        w_rest = w_emit[1:]
        tables, ids, w_table = _emission_tables(params, obs, w_emit)
        ids_rest, id0 = ids[1:], ids[0]
    compensate = jnp.finfo(dtype).bits < 64  # Kahan summation of the running sums
    shared, steps, first = scan_inputs(params)
    (m_last, P_last), fwd, logliks = _forward(params, yt, obs, complete, drive)
    m_in = 0 if v_trans is None else v_trans.shape[-1]

    emission = functools.partial(_emission, None if complete else tables)
    grouped = num_groups > 1

    def backward(carry, xs):
        m_next, P_next, acc = carry  # smoothed x_{k+1}
        (m_f, P_f, m_pred, gain), k, g, w_t, y_next, obs_next, w_next, i_next, v_k = xs
        f = shared | k
        m = m_f + (m_next - m_pred) @ gain.T
        P = smoothed_cov(P_f, P_next, gain, f["A"], f["Sigma"])
        cross = P_next @ gain.T  # Cov[x_{k+1}, x_k | y_{1:T}]
        if grouped:  # E[a_k a_k^T], E[x_{k+1} a_k^T], E[x_{k+1} x_{k+1}^T] into group g
            # a_k = [x_k; v_k], the regressor of x_{k+1} (x_k alone without inputs); all three
            # padded to (d + m, d + m), the rows of x_{k+1} first
            pad = lambda X: jnp.pad(X, ((0, m_in), (0, m_in)))  # noqa: E731
            a = m if v_k is None else jnp.concatenate([m, v_k], axis=-1)
            a_next = jnp.pad(m_next, ((0, 0), (0, m_in)))
            block = [pad(b * P) + a.T @ a, pad(b * cross) + a_next.T @ a,
                     pad(b * P_next) + a_next.T @ a_next]  # fmt: skip
            S = _add(acc["S"], _scaled(w_t, jnp.stack(block)), compensate, g)
        else:  # their covariance parts; the means follow in one matrix product
            S = _add(acc["S"], _scaled(w_t, jnp.stack([P, cross, P_next])), compensate)
        Ey, parts = emission(m_next, P_next, f["u"], y_next, obs_next, i_next)  # at k + 1
        Ey = None if complete else Ey
        if per_step:
            return (m, P, {"S": S}), (m, Ey, parts)
        pairs = zip(acc["emit"], parts, strict=True)
        emit = [_add(a, _scaled(w_next, x), compensate) for a, x in pairs]
        return (m, P, {"S": S, "emit": emit}), (m, Ey, None)

    acc = _accumulators(num_groups, d, p, per_step, complete, dtype, compensate, m_in)
    xs = (fwd, steps, groups, w_trans, yt[1:], obs_rest, w_rest, ids_rest, v_trans)
    (m_first, P_first, acc), (ms, Eys, outs) = jax.lax.scan(
        backward, (m_last, P_last, acc), xs, reverse=True
    )
    if compensate:
        acc = jax.tree.map(lambda a: a[0], acc, is_leaf=lambda a: isinstance(a, tuple))

    m_all = jnp.concatenate([ms, m_last[None]])  # (T, b, d)
    S00, S10, S11, n_trans = _transition_sums(
        acc["S"], ms, m_all, w_trans, groups, num_groups, complete, v_trans
    )
    # emissions: sums of products of the means [E[y], xhat], plus the covariance parts
    Ey0, parts0 = emission(m_first, P_first, first["u"], yt[0], obs0, id0)
    Ey = y_given if complete else jnp.concatenate([Ey0[None], Eys]) + shift
    if per_step:  # (T, ...) arrays
        P_e, *J_parts = (jnp.concatenate([a[None], r]) for a, r in zip(parts0, outs, strict=True))
        missing_cov = None if complete else tables[2][ids]
    else:
        w0 = None if complete else w_emit[0]
        P_e, *J_parts = (a + _scaled(w0, x) for a, x in zip(acc["emit"], parts0, strict=True))
        missing_cov = None if complete else jnp.einsum("k,kpq->pq", w_table, tables[2])
    yy, yx, xx, n_emit = _emission_sums(
        Ey, m_all, P_e, J_parts or None, missing_cov, w_emit, per_step, v_emit
    )
    stats = SufficientStats(
        x1=jnp.sum(m_first, axis=0),
        x1x1=b * P_first + m_first.T @ m_first,
        num_sequences=jnp.asarray(b, dtype),
        S00=S00,
        S10=S10,
        S11=S11,
        num_transitions=n_trans,
        yy=yy,
        yx=yx,
        xx=xx,
        num_emissions=n_emit,
    )
    return stats, logliks


def expected_stats(
    params: LGSSMParams,
    y: Float[Array, "B T p"],
    groups: Int[Array, "*B T-1"] | None = None,
    num_groups: int = 1,
    per_step: bool = False,
    params_batched: bool = False,
    complete: bool = False,
    same_mask: bool = False,
    inputs: Float[Array, "B T m"] | None = None,
) -> tuple[SufficientStats, Float[Array, " B"]]:
    r"""E-step: statistics summed over the `B` sequences, and each sequence's log-likelihood.

    With shared parameters and transition groups, sequences with one NaN mask (complete data, a
    single sequence, or `same_mask`) share one covariance recursion and are smoothed together;
    otherwise each sequence runs its own.

    Args:
        params: validated discrete parameters (per-sequence `A`, `Sigma` when `params_batched`).
        y: `(B, T, p)` observations, NaN = missing.
        groups: group index of each transition, `(T-1,)` or `(B, T-1)`; None puts all in group 0.
        num_groups: `G`, the number of groups (static).
        per_step: keep emission statistics per time step (for per-step emissions).
        params_batched: `params.A`, `.Sigma` carry a leading sequence axis.
        complete: `y` has no NaN (static; a faster path, and the steady-state shortcut below
            for shared parameters and T >= `steady.SHORTCUT_FROM`).
        same_mask: all sequences have the same NaN entries (static, a promise like `complete`;
            detected by itself when `y` is concrete).
        inputs: `(B, T, m)` known inputs of a model with gains `params.B` (`(d, m)` or per
            transition) and/or `params.D` (`(p, m)`): the regressor of $x_{k+1}$ becomes
            $[x_k; v_k]$ (`S00` `(G, d+m, d+m)`, `S10` `(G, d, d+m)`) and that of $y_k$
            $[x_k; 1; v_k]$ (`yx`, `xx` gain m columns), so the closed-form M-step gives
            $[A\ B_k]$ and $[H\ u\ D]$ as one regression each. A gain that is None gives no
            columns (it is not part of the model).
    """
    B, T = y.shape[0], y.shape[1]
    if groups is None:
        groups = jnp.zeros((T - 1,), dtype=jnp.int32)
    together = (
        not params_batched
        and groups.ndim == 1
        and (complete or B == 1 or same_mask or shares_mask(y))
    )

    if params.B is None and params.D is None:
        inputs = None

    def full(_):
        if together:
            return _mask_stats(params, y, groups, num_groups, per_step, complete, inputs)
        p_axes = None
        if params_batched:
            p_axes = LGSSMParams(0, 0, None, None, None, None, None,
                                 None if params.B is None else 0, None)  # fmt: skip
        g_axis = 0 if groups.ndim == 2 else None

        def one(prm, yy, g, v):
            return _mask_stats(prm, yy[None], g, num_groups, per_step, complete,
                               None if v is None else v[None])  # fmt: skip

        v_axis = None if inputs is None else 0
        stats, logliks = jax.vmap(one, in_axes=(p_axes, 0, g_axis, v_axis))(
            params, y, groups, inputs
        )
        return SufficientStats(*(jnp.sum(s, axis=0) for s in stats)), logliks[:, 0]

    if (
        num_groups == 1
        and not params_batched
        and inputs is None
        and steady_state_applies(params, T, complete, per_step)
    ):
        cov = steady_covariances(params, T)
        return jax.lax.cond(cov["ok"], lambda _: steady_stats(params, y, cov), full, None)
    return full(None)


# --------------------------------------------------------------------------- steady state
#
