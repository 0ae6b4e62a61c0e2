r"""A start for EM from the data alone: stochastic realisation by canonical correlation analysis.

`subspace_start(y, times, state_dim=d)` estimates a d-state model from the second moments of the
data, with no start of its own (Larimore 1990, "Canonical variate analysis in identification,
filtering and adaptive control", IEEE CDC; Katayama 2005, *Subspace Methods for System
Identification*, ch. 8). With horizons of K rows, the past $p_t = (y_{t-1}, \dots, y_{t-K})$
and the future $f_t = (y_t, \dots, y_{t+K-1})$ of a d-state linear-Gaussian model share
exactly d canonical correlations: with $\Sigma_{pp}, \Sigma_{ff}, \Sigma_{fp}$ their sample
covariances and $L_p L_p^\top = \Sigma_{pp}$, $L_f L_f^\top = \Sigma_{ff}$,

$$L_f^{-1} \Sigma_{fp} L_p^{-\top} = U S V^\top, \qquad \hat x_t = V_d^\top L_p^{-1} p_t$$

are the d canonical variates of the past: the Kalman filter's predicted states in the basis where
their covariance is I. Least squares then gives A ($\hat x_{t+1}$ on $\hat x_t$, Sigma the residual
covariance) and H ($y_t$ on $\hat x_t$, R the residual covariance, which is the innovation
covariance and so an over-estimate of R, a safe side for EM to start from), u the mean of y,
mu1 = 0 and P1 = I; the SDE follows by the block matrix logarithm (`sde_from_discrete`) at the
median step. Each step is consistent as the record grows; EM then climbs to the maximum.

Rows are taken as equally spaced (irregular times use the median step, which is only a start);
a missing value is replaced by its column's mean for this estimate; several sequences pool their
windows. A transition whose logarithm is not real (a negative real eigenvalue, an aliased or
badly estimated mode) or that is not stable is moved to the nearest one that is: the modulus of
each eigenvalue is clipped to [0.01, 0.999] and a negative real eigenvalue is reflected to
positive; such a start says so in a warning.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._checks import check_dt, check_times
from .discretize import sde_from_discrete
from .params import LGSSMParams, SDEParams

#: clipping of the eigenvalue moduli of the estimated transition
MIN_MODULUS, MAX_MODULUS = 0.01, 0.999
#: the default horizon is the AIC order of a vector autoregression of at most this many rows,
#: and of at most MAX_WINDOW numbers (rows times columns)
MAX_ORDER, MAX_WINDOW = 40, 160


def _windows(y3: np.ndarray, K: int):
    """Past, future and present rows `(N, K p)`, `(N, K p)`, `(N, p)` of every sequence, and
    the index of each window's successor (-1 where the sequence ends)."""
    past, future, successor = [], [], []
    offset = 0
    for y in y3:
        T = y.shape[0]
        n = T - 2 * K + 1
        if n < 1:
            continue
        idx = np.arange(K, K + n)
        past.append(np.concatenate([y[idx - j] for j in range(1, K + 1)], axis=1))
        future.append(np.concatenate([y[idx + j] for j in range(K)], axis=1))
        nxt = offset + np.arange(1, n + 1)
        nxt[-1] = -1
        successor.append(nxt)
        offset += n
    if not past:
        raise ValueError(
            f"`y` is too short for a subspace start of this size: each sequence needs at least "
            f"{2 * K} rows (horizons of K = {K} rows)."
        )
    return np.concatenate(past), np.concatenate(future), np.concatenate(successor)


def _ar_order(y3: np.ndarray, longest: int) -> int:
    """The order k <= `longest` of the vector autoregression of `y3` (centred) with the least
    AIC, N log det(S_k) + 2 k p^2, all orders fitted by least squares on the same rows."""
    if longest < 1:
        return 1
    past, future, _ = _windows(y3, longest)
    p = y3.shape[-1]
    present = future[:, :p]
    n = past.shape[0]
    G, c, yy = past.T @ past, past.T @ present, present.T @ present
    ridge = 1e-10 * max(float(np.trace(G)) / G.shape[0], 1e-300)
    best, order = np.inf, 1
    for k in range(1, longest + 1):
        m = k * p
        b = np.linalg.solve(G[:m, :m] + ridge * np.eye(m), c[:m])
        sign, logdet = np.linalg.slogdet((yy - c[:m].T @ b) / n)
        aic = n * logdet + 2 * k * p * p if sign > 0 else np.inf
        if aic < best:
            best, order = aic, k
    return order


def _chol(S: np.ndarray) -> np.ndarray:
    ridge = 1e-10 * max(float(np.trace(S)) / S.shape[0], 1e-300)
    return np.linalg.cholesky(S + ridge * np.eye(S.shape[0]))


def subspace_lgssm(y, *, state_dim: int, horizon: int | None = None) -> LGSSMParams:
    """The discrete model of the canonical-correlation realisation (module docstring) of `y`
    `(T, p)` or `(B, T, p)`, NaN = missing, rows taken as equally spaced.

    Args:
        y (ArrayLike): observations.
        state_dim: d >= 1.
        horizon: K, the rows in the past and the future windows. By default the order of
            the vector autoregression of y with the least AIC (Larimore's choice: the past must
            hold what a Kalman filter remembers), of at most `MAX_ORDER` rows, `MAX_WINDOW`
            numbers and an eighth of the longest sequence, and at least ceil(d / p) + 1.

    Returns:
        (LGSSMParams): NumPy arrays, shared (not per-step) fields; mu1 = 0 and P1 = I.

    Raises:
        ValueError: a bad `state_dim` or `horizon`, no observed value, or sequences too short.
    """
    y = np.asarray(y, dtype=float)
    if y.ndim not in (2, 3):
        raise ValueError(f"`y` must be (T, p) or (B, T, p); got shape {y.shape}.")
    y3 = y[None] if y.ndim == 2 else y
    p = y3.shape[-1]
    d = int(state_dim)
    if d < 1:
        raise ValueError(f"`state_dim` must be >= 1; got {state_dim}.")
    observed = np.isfinite(y3)
    if not observed.any(axis=(0, 1)).all():
        missing = np.flatnonzero(~observed.any(axis=(0, 1))).tolist()
        raise ValueError(f"column(s) {missing} of `y` have no observed value.")
    mean = np.array([np.mean(y3[..., j][observed[..., j]]) for j in range(p)])
    filled = np.where(observed, y3 - mean, 0.0)
    if horizon is None:
        longest_order = min(MAX_ORDER, max(4, MAX_WINDOW // p), y3.shape[1] // 8)
        K = max(_ar_order(filled, longest_order), math.ceil(d / p) + 1)
    else:
        K = int(horizon)
    if K < 1 or K * p < d:
        raise ValueError(
            f"the horizon K = {K} rows of {p} column(s) cannot hold {d} states (K p >= d needed); "
            "a longer series or a smaller `state_dim`."
        )
    past, future, successor = _windows(filled, K)
    n = past.shape[0]
    if n < 2 * K * p:
        raise ValueError(
            f"`y` is too short for a subspace start: {n} windows of {2 * K} rows for "
            f"{2 * K * p} moments; a longer series or a smaller `state_dim`."
        )
    Lp = _chol(past.T @ past / n)
    Lf = _chol(future.T @ future / n)
    W = np.linalg.solve(Lf, np.linalg.solve(Lp, (future.T @ past / n).T).T)
    _, _, Vt = np.linalg.svd(W)
    states = np.linalg.solve(Lp, past.T).T @ Vt[:d].T  # (n, d), covariance about I
    has_next = successor >= 0
    x0, x1 = states[has_next], states[successor[has_next]]
    A = np.linalg.lstsq(x0, x1, rcond=None)[0].T
    w = x1 - x0 @ A.T
    Sigma = w.T @ w / max(len(w) - d, 1)
    present = future[:, :p]
    H = np.linalg.lstsq(states, present, rcond=None)[0].T
    e = present - states @ H.T
    R = e.T @ e / max(n - d, 1)
    floor = 1e-6 * np.maximum(np.diag(future.T @ future / n)[:p], 1e-300)
    R = 0.5 * (R + R.T) + np.diag(floor)
    return LGSSMParams(
        A=A,
        Sigma=0.5 * (Sigma + Sigma.T) + 1e-9 * np.eye(d),
        H=H,
        u=mean,
        R=R,
        mu1=np.zeros(d),
        P1=np.eye(d),
    )


def _with_real_logarithm(A: np.ndarray) -> tuple[np.ndarray, bool]:
    """A with each eigenvalue's modulus clipped to [MIN_MODULUS, MAX_MODULUS] and negative real
    eigenvalues reflected to positive; whether anything moved."""
    eig, V = np.linalg.eig(A)
    scale = max(1.0, float(np.abs(eig).max()))
    real = np.abs(eig.imag) <= 1e-10 * scale
    fixed = np.where(real & (eig.real < 0), np.abs(eig), eig)
    modulus = np.abs(fixed)
    clipped = np.clip(modulus, MIN_MODULUS, MAX_MODULUS)
    fixed = np.where(modulus > 0, fixed * clipped / np.where(modulus > 0, modulus, 1), MIN_MODULUS)
    if np.allclose(fixed, eig, rtol=0, atol=1e-12 * scale):
        return A, False
    return np.real(V @ np.diag(fixed) @ np.linalg.inv(V)), True


def subspace_start(
    y, times=None, *, state_dim: int, dt: float | None = None, horizon: int | None = None
):
    r"""An `SDEParams` start for `fit_em` from the data alone: the canonical-correlation
    realisation of `y` (`subspace_lgssm`) mapped to the SDE at the median step (module
    docstring).

    Args:
        y (ArrayLike): `(T, p)` or `(B, T, p)` observations, NaN = missing.
        times (ArrayLike | None): `(T,)` (or `(B, T)`) observation times; or give `dt`.
        state_dim: d >= 1.
        dt: the step, when `times` is not given.
        horizon: see `subspace_lgssm`.

    Returns:
        (SDEParams): NumPy arrays; mu1 = 0 and P1 = I (the state's basis is the canonical one,
            in which the stationary covariance is about I); L is the Cholesky factor of Q.

    Examples:
        >>> import jax, numpy as np, sdessm
        >>> truth = sdessm.SDEParams(F=[[-0.5]], L=[[1.0]], H=[[1.0]], u=[3.0], R=[[0.01]],
        ...                          mu1=[0.0], P1=[[1.0]])
        >>> times = np.arange(5000) * 0.2
        >>> _, y = sdessm.simulate(jax.random.key(0), truth, times)
        >>> start = subspace_start(y, times, state_dim=1)
        >>> round(float(start.F[0, 0]), 1), round(float(start.u[0]), 1)
        (-0.5, 3.0)
    """
    if (times is None) == (dt is None):
        raise ValueError("give exactly one of `times` and `dt`.")
    if times is not None:
        check_times("times", times, np.shape(y)[-2])
        step = float(np.median(np.diff(np.asarray(times, dtype=float), axis=-1)))
    else:
        check_dt("dt", dt)
        step = float(dt)
    discrete = subspace_lgssm(y, state_dim=state_dim, horizon=horizon)
    A, moved = _with_real_logarithm(discrete.A)
    if moved:
        warnings.warn(
            "the subspace estimate of the transition had an eigenvalue with no real logarithm or "
            "outside the unit circle; it was moved to the nearest admissible one for the start.",
            stacklevel=2,
        )
    F, Q = sde_from_discrete(A, discrete.Sigma, step)
    eigQ, vecQ = np.linalg.eigh(0.5 * (Q + Q.T))
    floor = 1e-8 * max(float(eigQ.max()), 1e-300)
    Q = (vecQ * np.maximum(eigQ, floor)) @ vecQ.T
    return SDEParams(
        F=F,
        L=np.linalg.cholesky(0.5 * (Q + Q.T)),
        H=discrete.H,
        u=discrete.u,
        R=discrete.R,
        mu1=discrete.mu1,
        P1=discrete.P1,
    )
