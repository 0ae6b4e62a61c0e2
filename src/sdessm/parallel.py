r"""Parallel-in-time Kalman filter and RTS smoother: prefix sums of an associative operator.

Särkkä and García-Fernández (2021, "Temporal parallelization of Bayesian smoothers", IEEE
Transactions on Automatic Control 66(1)) write both recursions as an all-prefix-sums problem:
each step becomes an *element*, the elements combine with an associative operator $\otimes$, and
`jax.lax.associative_scan` evaluates all $T$ prefixes in $O(\log T)$ sequential depth at
$O(T)$ total work, a constant factor more than the sequential scan's (each combination is a
$d \times d$ LU solve and about ten matrix products). This is the path for GPUs and TPUs and long
sequences, selected by `method="parallel"` in `sdessm.kalman_filter`, `sdessm.rts_smoother` and
`sdessm.log_likelihood`; on CPU the sequential scan is as fast or faster. The scan unrolls into
about $2 \log_2 T$ levels of combinations, so compiling takes longer too (seconds, about 20 s
for $T = 10^4$ on two CPU cores).
Results equal the sequential ones to round-off, with the same field meanings (`FilterResult`,
`SmootherResult`), NaN handling and time-varying parameters.

Notation: transition $x_k = A_k x_{k-1} + q_k$, $q_k \sim N(0, \Sigma_k)$ (the transition into
$k$, $k = 2..T$); emission $y_k = H_k x_k + u_k + r_k$, $r_k \sim N(0, R_k)$.

**Filtering elements** $a_k = (\bar A_k, b_k, C_k, \eta_k, J_k)$ represent
$p(x_k \mid x_{k-1}, y_k) = N(x_k; \bar A_k x_{k-1} + b_k, C_k)$ and
$p(y_k \mid x_{k-1}) \propto \exp(-\tfrac12 x_{k-1}^\top J_k x_{k-1} + \eta_k^\top x_{k-1})$.
For $k \ge 2$, with $S_k = H_k \Sigma_k H_k^\top + R_k$ (Cholesky factor $V_k$),
$K_k = \Sigma_k H_k^\top S_k^{-1}$ and $\tilde y_k = y_k - u_k$:

$$\bar A_k = (I - K_k H_k) A_k, \quad b_k = K_k \tilde y_k, \quad
C_k = (I - K_k H_k) \Sigma_k (I - K_k H_k)^\top + K_k R_k K_k^\top \text{ (Joseph)},$$
$$\eta_k = (V_k^{-1} H_k A_k)^\top V_k^{-1} \tilde y_k, \quad
J_k = (V_k^{-1} H_k A_k)^\top (V_k^{-1} H_k A_k).$$

The first element is the filtered $x_1$ itself: $a_1 = (0,\ m_{1|1},\ P_{1|1},\ 0,\ 0)$, from the
sequential update of $N(\mu_1, P_1)$ by $y_1$. For $i$ before $j$, with $M = I + C_i J_j$
(invertible, as $C_i J_j$ has non-negative eigenvalues, but not symmetric, and $C_i$, $J_j$ may
be singular: so an LU solve, one per combination, as
$\bar A_i^\top M^{-\top} = (M^{-1} \bar A_i)^\top$):

$$a_i \otimes a_j = \big(\bar A_j M^{-1} \bar A_i,\ \ \bar A_j M^{-1} (b_i + C_i \eta_j) + b_j,\ \
\bar A_j M^{-1} C_i \bar A_j^\top + C_j,$$
$$\bar A_i^\top M^{-\top} (\eta_j - J_j b_i) + \eta_i,\ \
\bar A_i^\top M^{-\top} J_j \bar A_i + J_i\big).$$

The prefix $a_1 \otimes \dots \otimes a_k$ has $\bar A = 0$, $b = m_{k|k}$ and $C = P_{k|k}$. The
predicted moments $m_{k|k-1} = A_k m_{k-1|k-1}$, $P_{k|k-1} = A_k P_{k-1|k-1} A_k^\top +
\Sigma_k$ and the log-likelihood $\sum_k \log N(y_k; H_k m_{k|k-1} + u_k, H_k P_{k|k-1} H_k^\top +
R_k)$ (observed entries only) then follow in one vectorised pass over $k$, each a Cholesky solve.

**Smoothing elements** $s_k = (E_k, g_k, L_k)$ represent
$p(x_k \mid x_{k+1}, y_{1:k}) = N(x_k; E_k x_{k+1} + g_k, L_k)$: for $k < T$, with the RTS gain
$E_k = G_k = P_{k|k} A_{k+1}^\top P_{k+1|k}^{-1}$ (a Cholesky solve),

$$g_k = m_{k|k} - G_k m_{k+1|k}, \quad
L_k = (I - G_k A_{k+1}) P_{k|k} (I - G_k A_{k+1})^\top + G_k \Sigma_{k+1} G_k^\top,$$

and $s_T = (0,\ m_{T|T},\ P_{T|T})$. For $i$ before $j$,
$s_i \otimes s_j = (E_i E_j,\ E_i g_j + g_i,\ E_i L_j E_i^\top + L_i)$, a sum of PSD terms; the
suffix $s_k \otimes \dots \otimes s_T$ (a reversed scan) has $E = 0$, $g = m_{k|T}$ and
$L = P_{k|T}$. The lag-one cross-covariances are $\mathrm{Cov}[x_{k+1}, x_k \mid y_{1:T}] =
P_{k+1|T} G_k^\top$.

Missing values are treated as in the sequential filter (`sdessm.kalman`): a NaN component has
its row of $H_k$ zeroed and is decoupled in $R_k$, so it adds nothing to $K_k$, $J_k$, $\eta_k$
or the log-likelihood; a fully missing $y_k$ gives $a_k = (A_k, 0, \Sigma_k, 0, 0)$. Every
covariance is symmetrised after each combination.

Examples:
    >>> import jax.numpy as jnp, numpy as np, sdessm
    >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
    ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
    >>> y = jnp.array([[1.0], [jnp.nan], [3.0], [2.0], [0.5]])
    >>> par = sdessm.rts_smoother(rw, y, dt=1.0, method="parallel")
    >>> seq = sdessm.rts_smoother(rw, y, dt=1.0)
    >>> np.allclose(par.smoothed_covs, seq.smoothed_covs, rtol=1e-12, atol=0.0)
    True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .discretize import symmetrize
from .params import LGSSMParams
from .recursion import (
    FilterResult,
    SmootherResult,
    decoupled,
    joseph,
    observed_rows,
    predict,
    scan_inputs,
    smoothed_cov,
    smoother_gain,
    update_rows,
)


def _mask(H, u, R, y, complete: bool):
    """`(H, R, y - u, number of observed entries)`, the missing entries removed as in
    `recursion.update_rows`: zero rows of H, decoupled in R, zero residual."""
    p = H.shape[0]
    if complete:
        return H, R, y - u, p
    obs = ~jnp.isnan(y)
    e = jnp.where(obs, y - u, 0.0)
    return observed_rows(H, obs), decoupled(R, obs), e, jnp.sum(obs).astype(y.dtype)


def _filter_element(A, Sigma, H, u, R, y, complete: bool = False):
    r"""The filtering element $(\bar A_k, b_k, C_k, \eta_k, J_k)$ of one step $k \ge 2$."""
    d = A.shape[0]
    H, R, e, _ = _mask(H, u, R, y, complete)  # e = y - u
    HS = H @ Sigma
    chol = jnp.linalg.cholesky(symmetrize(HS @ H.T + R))
    W = solve_triangular(chol, jnp.concatenate([HS, H @ A, e[:, None]], axis=1), lower=True)
    W_S, W_A, w_e = W[:, :d], W[:, d : 2 * d], W[:, 2 * d]
    gain = solve_triangular(chol, W_S, lower=True, trans=1).T  # K = Sigma H^T S^{-1}
    return (
        A - gain @ H @ A,
        W_S.T @ w_e,
        joseph(Sigma, gain, H, R),
        W_A.T @ w_e,
        symmetrize(W_A.T @ W_A),
    )


def _combine_filter(a_i, a_j):
    r"""$a_i \otimes a_j$ for filtering elements, $i$ before $j$ (one pair; vmapped by the scan).

    One LU solve, $Z = M^{-1} [\bar A_i,\ b_i + C_i \eta_j,\ C_i]$, gives every term:
    $\bar A_i^\top M^{-\top} = Z_A^\top$.
    """
    A_i, b_i, C_i, eta_i, J_i = a_i
    A_j, b_j, C_j, eta_j, J_j = a_j
    d = A_i.shape[0]
    M = jnp.eye(d, dtype=A_i.dtype) + C_i @ J_j
    Z = jnp.linalg.solve(M, jnp.concatenate([A_i, (b_i + C_i @ eta_j)[:, None], C_i], axis=1))
    Z_A, z_b, Z_C = Z[:, :d], Z[:, d], Z[:, d + 1 :]
    return (
        A_j @ Z_A,
        A_j @ z_b + b_j,
        symmetrize(A_j @ Z_C @ A_j.T + C_j),
        Z_A.T @ (eta_j - J_j @ b_i) + eta_i,
        symmetrize(Z_A.T @ J_j @ A_i + J_i),
    )


def _combine_smoother(s_later, s_earlier):
    r"""$s_i \otimes s_j$ for smoothing elements, $i$ before $j$; `associative_scan` with
    `reverse=True` passes the later element first."""
    E_j, g_j, L_j = s_later
    E_i, g_i, L_i = s_earlier
    return E_i @ E_j, E_i @ g_j + g_i, symmetrize(E_i @ L_j @ E_i.T + L_i)


def _innovation_loglik(m, P, H, u, R, y, complete: bool = False):
    r"""$\log N(y; H m + u, H P H^\top + R)$ over the observed entries of y."""
    H, R, e, n_obs = _mask(H, u, R, y, complete)
    chol = jnp.linalg.cholesky(symmetrize(H @ P @ H.T + R))
    w = solve_triangular(chol, e - H @ m, lower=True)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    return -0.5 * (n_obs * jnp.log(2.0 * jnp.pi) + log_det + w @ w)


def _axes(params: LGSSMParams, names):
    """vmap axes of the fields `names`: 0 where the field carries a time axis, else None."""
    tv = params.time_varying()
    return tuple(0 if tv[k] else None for k in names)


def filter_sequence_parallel(params: LGSSMParams, y, complete: bool = False) -> FilterResult:
    """`kalman.filter_sequence` by an associative scan: the same `FilterResult`, to round-off."""
    shared, per_step, first = scan_inputs(params)
    obs = None if complete else ~jnp.isnan(y[0])
    m1, P1, _ = update_rows(
        params.mu1[None], params.P1, first["H"], first["u"], first["R"], y[:1], obs, complete
    )
    m1 = m1[0]
    names = ("A", "Sigma", "H", "u", "R")
    fields = shared | per_step
    make = functools.partial(_filter_element, complete=complete)
    elems = jax.vmap(make, in_axes=tuple(0 if k in per_step else None for k in names) + (0,))(
        *(fields[k] for k in names), y[1:]
    )
    zero = jnp.zeros_like(P1)
    first_elem = (zero, m1, P1, jnp.zeros_like(m1), zero)
    elems = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first_elem, elems)
    _, means, covs, _, _ = jax.lax.associative_scan(jax.vmap(_combine_filter), elems)

    pred_means, pred_covs = jax.vmap(predict, in_axes=(0, 0) + _axes(params, ("A", "Sigma")))(
        means[:-1], covs[:-1], params.A, params.Sigma
    )
    pred_means = jnp.concatenate([params.mu1[None], pred_means])
    pred_covs = jnp.concatenate([params.P1[None], pred_covs])
    loglik_k = functools.partial(_innovation_loglik, complete=complete)
    lls = jax.vmap(loglik_k, in_axes=(0, 0) + _axes(params, ("H", "u", "R")) + (0,))(
        pred_means, pred_covs, params.H, params.u, params.R, y
    )
    return FilterResult(
        filtered_means=means,
        filtered_covs=covs,
        predicted_means=pred_means,
        predicted_covs=pred_covs,
        log_likelihood=jnp.sum(lls),
    )


def loglik_sequence_parallel(params: LGSSMParams, y, complete: bool = False):
    r"""$\log p(y_{1:T})$ from `filter_sequence_parallel`."""
    return filter_sequence_parallel(params, y, complete).log_likelihood


def smoother_sequence_parallel(params: LGSSMParams, y, complete: bool = False) -> SmootherResult:
    """`kalman.smoother_sequence` by two associative scans (filter, then a reversed smoother scan):
    the same `SmootherResult`, to round-off."""
    filt = filter_sequence_parallel(params, y, complete)
    axes = _axes(params, ("A", "Sigma"))
    P_f = filt.filtered_covs[:-1]
    gains = jax.vmap(smoother_gain, in_axes=(0, 0, axes[0]))(P_f, filt.predicted_covs[1:], params.A)
    g = filt.filtered_means[:-1] - jnp.einsum("kij,kj->ki", gains, filt.predicted_means[1:])
    # L_k: the sequential smoothed covariance with P^s_{k+1} = 0
    L = jax.vmap(smoothed_cov, in_axes=(0, 0, 0) + axes)(
        P_f, jnp.zeros_like(P_f), gains, params.A, params.Sigma
    )
    last_cov = filt.filtered_covs[-1:]
    last = (jnp.zeros_like(last_cov), filt.filtered_means[-1:], last_cov)  # s_T = (0, m, P)
    elems = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), (gains, g, L), last)
    _, means, covs = jax.lax.associative_scan(jax.vmap(_combine_smoother), elems, reverse=True)
    return SmootherResult(
        smoothed_means=means,
        smoothed_covs=covs,
        cross_covs=covs[1:] @ jnp.swapaxes(gains, -1, -2),  # Cov[x_{k+1}, x_k | y_{1:T}]
        log_likelihood=filt.log_likelihood,
    )
