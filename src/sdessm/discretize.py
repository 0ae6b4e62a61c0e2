r"""Exact discretisation of the LTI SDE (Van Loan), and back (the block matrix logarithm).

The maths on matrices alone: `sdessm.params` puts it on a time grid for a whole model
(`discretize_params`, `SDEParams.discretize`).

Over a step $s$ the SDE $dx = F x\,dt + L\,dW$ has Gaussian transitions
$x_{t+s} \mid x_t \sim N(A x_t, \Sigma)$ with $A = e^{F s}$ and
$\Sigma = \int_0^s e^{F r} Q e^{F^\top r}\,dr$, $Q = L L^\top$. Van Loan (1978):
$\exp\left(\begin{bmatrix} F & Q \\ 0 & -F^\top \end{bmatrix} s\right)
= \begin{bmatrix} A & \Sigma A^{-\top} \\ 0 & A^{-\top} \end{bmatrix}$.

Both are power series in the step with matrix coefficients shared by every step:
$A(h) = \sum_j \frac{h^j}{j!} F^j$ and $\Sigma(h) = \sum_{j \ge 1} \frac{h^j}{j!} Q_j$ with
$Q_1 = Q$, $Q_{j+1} = F Q_j + Q_j F^\top$ (the derivatives of $\Sigma$ at 0). So a batch of
steps costs a few products of $d \times d$ matrices plus one matrix product
`(steps, terms) x (terms, d^2)`, whatever its size.

For a stiff step ($\|F\| s \gg 1$) a series loses every digit to cancellation. We therefore
evaluate it on the reduced step $h = s / 2^k$ with $\|F\|_1 h, \|F\|_\infty h \le 1$, where it is
well conditioned, and double exactly $k$ times:
$A_{2h} = A_h^2$, $\Sigma_{2h} = A_h \Sigma_h A_h^\top + \Sigma_h$ (the semigroup property;
every term is PSD, so no cancellation).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, ArrayLike, Float

from ._checks import (
    as_float_array,
    as_real_array,
    check_covariance,
    check_dt,
    check_finite,
    concrete,
    float64,
)
from .errors import NoRealLogarithmError

#: Largest $\max(\|F\|_1, \|F\|_\infty) h$ at which the series are evaluated.
_THETA = 1.0
#: Terms of the series. With $\theta = \|F\| h \le 1$ the truncation error of $A$ is below
#: $\theta^{N+1} / (N+1)!$ and that of $\Sigma$, relative to $\|Q\| h$, below
#: $(2\theta)^N / (N+1)!$ (since $\|Q_j\| \le (2\|F\|)^{j-1} \|Q\|$): 1e-18 at N = 24.
_SERIES_DEGREE = 24
#: Most doublings; enough for $\|F\|_1 s$ up to $2^{48}$.
_MAX_DOUBLINGS = 48
#: Doublings of the short loop, run when no step of a batch needs more (steps up to 16 times
#: the drift's time scale).
_FEW_DOUBLINGS = 4
#: Steps equal to this many significant digits share one matrix exponential.
STEP_DIGITS = 12


def symmetrize(m: Float[Array, "... n n"]) -> Float[Array, "... n n"]:
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def _series(F, Q, h):
    r"""(A, Sigma) for the steps `h` (n,), all with max(||F||_1, ||F||_inf) h <= `_THETA`.

    The shared coefficients are those of the scaled drift $G = F s$, $s = \max h$ (so their
    norms stay below $\theta^j$), and each step weighs them by $(h / s)^j / j!$.
    """
    scale = jnp.max(h, initial=0.0)
    scale = jnp.where(scale > 0, scale, 1.0)
    G = F * scale

    def term(carry, _):
        P, S = carry  # G^j and s^j Q_j
        X = G @ S
        return (G @ P, X + X.T), (P, S)  # X + X^T: every coefficient exactly symmetric

    (last, _), (powers, sigmas) = jax.lax.scan(
        term, (jnp.eye(F.shape[-1], dtype=F.dtype), Q * scale), None, length=_SERIES_DEGREE
    )
    powers = jnp.concatenate([powers, last[None]])  # G^0 .. G^N; sigmas: s Q_1 .. s^N Q_N
    r = (h / scale)[:, None]
    coef = jnp.cumprod(r / jnp.arange(1, _SERIES_DEGREE + 1, dtype=F.dtype)[None], axis=1)
    A = powers[0][None] + jnp.einsum("nj,jab->nab", coef, powers[1:])
    Sigma = jnp.einsum("nj,jab->nab", coef, sigmas)
    return A, Sigma


def _double(A, Sigma, k, num: int):
    """Apply `k` (n,) doublings (at most `num`) to the reduced-step (A, Sigma) (n, d, d)."""

    def double(carry, i):
        A, Sigma = carry
        keep = (i < k)[:, None, None]
        A2 = jnp.where(keep, A @ A, A)
        Sigma2 = jnp.where(keep, symmetrize(A @ Sigma @ jnp.swapaxes(A, -1, -2) + Sigma), Sigma)
        return (A2, Sigma2), None

    (A, Sigma), _ = jax.lax.scan(double, (A, Sigma), jnp.arange(num, dtype=A.dtype))
    return A, Sigma


def _double_blocks(A, Sigma, k):
    """`_double` up to `_MAX_DOUBLINGS` times, as blocks of `_FEW_DOUBLINGS`, each rematerialised
    for the gradient: its residuals are then one carry per block, not one per doubling (which,
    allocated on every gradient even when the branch is not taken, cost 4x the rest of it)."""

    def block(carry, j):
        return _double(*carry, k - j * _FEW_DOUBLINGS, _FEW_DOUBLINGS), None

    blocks = jnp.arange(_MAX_DOUBLINGS // _FEW_DOUBLINGS, dtype=A.dtype)
    return jax.lax.scan(jax.checkpoint(block), (A, Sigma), blocks)[0]


@jax.jit  # compiled once per shape
def discretize_steps(F, Q, steps):
    """(A, Sigma), each `steps.shape + (d, d)`, no validation.

    The doubling loop runs only as long as the batch's largest `k` needs: none (the usual case,
    steps no longer than the drift's time scale), `_FEW_DOUBLINGS` or `_MAX_DOUBLINGS`.
    """
    d = F.shape[-1]
    flat = jnp.reshape(steps, (-1,)).astype(F.dtype)
    absF = jnp.abs(F)  # max of the 1- and inf-norms: bounds both F and F^T
    norm = jnp.maximum(jnp.max(jnp.sum(absF, axis=0)), jnp.max(jnp.sum(absF, axis=1))) * flat
    k = jnp.where(norm > _THETA, jnp.ceil(jnp.log2(jnp.maximum(norm, _THETA) / _THETA)), 0.0)
    k = jax.lax.stop_gradient(jnp.minimum(k, _MAX_DOUBLINGS))
    A, Sigma = _series(F, Q, flat / 2.0**k)
    kmax = jnp.max(k, initial=0.0)
    branch = (kmax > 0).astype(jnp.int32) + (kmax > _FEW_DOUBLINGS).astype(jnp.int32)
    # remat: the gradient of a switch keeps every branch's residuals (zeros when not taken)
    few = jax.checkpoint(functools.partial(_double, num=_FEW_DOUBLINGS))
    most = jax.checkpoint(_double_blocks)
    A, Sigma = jax.lax.switch(branch, [lambda A, Sigma, k: (A, Sigma), few, most], A, Sigma, k)
    return A.reshape(steps.shape + (d, d)), Sigma.reshape(steps.shape + (d, d))


def group_steps(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct steps (equal to `STEP_DIGITS` significant digits) and each step's group index.

    Returns `(representatives (G,), groups)` with `groups` of the shape of `steps` (int32).
    """
    steps = np.asarray(steps, dtype=float)
    keys = np.round(steps / np.abs(steps).max(), STEP_DIGITS)
    _, first, inverse = np.unique(keys.ravel(), return_index=True, return_inverse=True)
    return steps.ravel()[first], inverse.reshape(steps.shape).astype(np.int32)


def time_steps(times):
    """`diff(times)` along the last axis: a NumPy array when `times` is concrete (also inside a
    trace, where `jnp.diff` would be traced and every step get its own matrix exponential)."""
    v = concrete(times)
    if v is not None and np.issubdtype(v.dtype, np.number):
        return np.diff(np.asarray(v, dtype=float), axis=-1)
    return jnp.diff(as_float_array(times, "times"), axis=-1)


def discretize_grouped(F, Q, steps):
    """As `discretize_steps`, with one exponential per distinct step when `steps` is concrete."""
    v = concrete(steps)
    if v is None or v.size == 0:
        return discretize_steps(F, Q, steps)
    reps, groups = group_steps(v)
    A_u, Sigma_u = discretize_steps(F, Q, jnp.asarray(reps, dtype=F.dtype))
    return A_u[groups], Sigma_u[groups]


@float64
def discretize(
    F: Float[ArrayLike, "d d"], L: Float[ArrayLike, "d m"], dt: Float[ArrayLike, "*steps"]
) -> tuple[Float[Array, "*steps d d"], Float[Array, "*steps d d"]]:
    r"""Exact discretisation of $dx = F x\,dt + L\,dW$ over steps of length `dt`.

    $A = e^{F\,\Delta t}$ and $\Sigma = \int_0^{\Delta t} e^{F s} L L^\top e^{F^\top s}\,ds$,
    the blocks of the Van Loan block matrix exponential, summed as power series with coefficients
    shared by all steps (on a reduced step, then doubled exactly, so that stiff steps keep their
    accuracy).

    Args:
        F: drift, `(d, d)`, finite.
        L: diffusion, `(d, m)`, finite.
        dt: step length(s), finite and > 0; an array gives one `(A, Sigma)` per entry.

    Returns:
        `(A, Sigma)`, each `(*dt.shape, d, d)`; `Sigma` symmetric.

    Raises:
        ValueError: a shape, a non-finite value or a step <= 0 (values checked for concrete
            arrays only, not inside `jax.jit`).
        TypeError: an argument that is not a real numeric array.

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> A, Sigma = sdessm.discretize(-jnp.eye(1), jnp.eye(1), 0.1)   # dx = -x dt + dW
        >>> bool(jnp.allclose(Sigma, 0.5 * (1 - jnp.exp(-0.2))))
        True
    """
    F, L, dt = as_float_array(F, "F"), as_float_array(L, "L"), as_float_array(dt, "dt")
    if F.ndim != 2 or F.shape[0] != F.shape[1]:
        raise ValueError(f"`F` must be a square matrix (d, d); got shape {F.shape}.")
    d = F.shape[0]
    if L.ndim != 2 or L.shape[0] != d:
        raise ValueError(f"`L` must have shape ({d}, m) to match `F`; got {L.shape}.")
    check_finite("F", F)
    check_finite("L", L)
    check_dt("dt", dt)
    return discretize_steps(F, L @ L.T, dt)


def stationary_covariance(F: Float[ArrayLike, "d d"], Q: Float[ArrayLike, "d d"]) -> Array:
    r"""The $P$ with $F P + P F^\top + Q = 0$: the stationary covariance of $dx = F x\,dt + L\,dW$.

    One linear system in $\mathrm{vec}(P)$ with the Kronecker sum $F \otimes I + I \otimes F$,
    so `jax.jit`, `jax.grad` and `jax.vmap` go through `jnp.linalg.solve`. The system is
    $d^2 \times d^2$ (cost $O(d^6)$): meant for small state dimensions (d up to ~10). The solution
    is unique when no two eigenvalues of F sum to zero, and it is the stationary covariance only
    when F is stable (every eigenvalue with negative real part).

    Args:
        F: drift, `(d, d)`, finite.
        Q: diffusion covariance $L L^\top$, `(d, d)`: symmetric to `1e-8` and positive
            semi-definite to `-1e-8` (smallest eigenvalue), both relative to `max(1, max|Q|)`.
            Values are checked only for concrete arrays, not inside `jax.jit`.

    Returns:
        `P`, `(d, d)`, symmetrised.

    Raises:
        ValueError: `F` or `Q` not square, of different sizes, not finite, or `Q` not a
            covariance.
        TypeError: `F` or `Q` not a real numeric array.

    Examples:
        >>> import jax.numpy as jnp
        >>> from sdessm.discretize import stationary_covariance
        >>> P = stationary_covariance(-0.5 * jnp.eye(1), 0.64 * jnp.eye(1))  # sigma^2 / (2 theta)
        >>> bool(jnp.allclose(P, 0.64))
        True
    """
    F, Q = as_real_array(F, "F"), as_real_array(Q, "Q")
    d = F.shape[-1] if F.ndim else 0
    if F.shape != (d, d) or Q.shape != (d, d):
        raise ValueError(f"`F` and `Q` must both be square (d, d); got {F.shape} and {Q.shape}.")
    check_finite("F", F)
    check_covariance("Q", Q)
    dtype = jnp.result_type(F, Q)
    F, Q = F.astype(dtype), Q.astype(dtype)
    eye = jnp.eye(d, dtype=dtype)
    # row-major vec: vec(F P) = (F kron I) vec(P), vec(P F^T) = (I kron F) vec(P)
    kron_sum = jnp.kron(F, eye) + jnp.kron(eye, F)
    P = jnp.linalg.solve(kron_sum, -jnp.reshape(Q, (d * d,))).reshape(d, d)
    return symmetrize(P)


# ----------------------------------------------------------------- back from the discrete model


def psd_factor(Q):
    """Cholesky factor of Q, or V sqrt(lambda) for a singular PSD Q."""
    w, V = np.linalg.eigh(Q)
    if w.min() > 1e-12 * max(1.0, np.abs(w).max()):
        return np.linalg.cholesky(Q)
    return V * np.sqrt(np.clip(w, 0.0, None))


@float64
def diffusion_from_sigma(F, A, Sigma) -> np.ndarray:
    r"""The diffusion $Q$ whose step covariance under a known drift is `Sigma`.

    $\Sigma = \int_0^{\Delta t} e^{Fs} Q e^{F^\top s} ds$ gives $A Q A^\top - Q = F \Sigma +
    \Sigma F^\top$ with $A = e^{F \Delta t}$: a Stein equation, solved exactly, with a unique
    solution when no two eigenvalues of A multiply to 1 (any stable F). Unlike the matrix
    logarithm it needs no invertible A, so stiff modes that decay within one step are fine.

    Examples:
        >>> import numpy as np, sdessm
        >>> F = np.diag([-500.0, -0.2])
        >>> A, Sigma = sdessm.discretize(F, [[0.3, 0.0], [0.1, 0.5]], 0.1)
        >>> Q = diffusion_from_sigma(F, A, Sigma)
        >>> np.round(Q, 10).tolist()
        [[0.09, 0.03], [0.03, 0.26]]
    """
    F, A, Sigma = (np.asarray(x, dtype=float) for x in (F, A, Sigma))
    Q = scipy.linalg.solve_discrete_lyapunov(A, -(F @ Sigma + Sigma @ F.T))
    return 0.5 * (Q + Q.T)


def sde_from_discrete(A, Sigma, dt: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Recover $(F, Q)$ from the discrete transition $(A, \Sigma)$ over a step `dt`.

    $[[F, Q], [0, -F^\top]] = \log([[A, \Sigma A^{-\top}], [0, A^{-\top}]]) / \Delta t$ with the
    principal matrix logarithm. Eigenvalues of F are identified only modulo $2\pi i / \Delta t$:
    the principal branch assumes $|\mathrm{Im}\,\lambda| < \pi / \Delta t$.

    Raises:
        NoRealLogarithmError: `A` is singular or has a negative real eigenvalue (the message
            says whether a non-principal real logarithm can exist).

    Examples:
        >>> import numpy as np, sdessm
        >>> A, Sigma = sdessm.discretize([[-0.5]], [[2.0]], 0.3)
        >>> F, Q = sdessm.sde_from_discrete(A, Sigma, 0.3)
        >>> np.round(F, 10).tolist(), np.round(Q, 10).tolist()
        ([[-0.5]], [[4.0]])
    """
    A, Sigma = np.asarray(A, dtype=float), np.asarray(Sigma, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or Sigma.shape != A.shape:
        raise ValueError(f"`A` and `Sigma` must be square and alike; got {A.shape}, {Sigma.shape}.")
    if not dt > 0:
        raise ValueError(f"`dt` must be > 0; got {dt}.")
    d = A.shape[0]
    eig = np.linalg.eigvals(A)
    scale = max(1.0, float(np.abs(eig).max()))
    real = np.abs(eig.imag) <= 1e-10 * scale
    zero, negative = real & (np.abs(eig) <= 1e-12 * scale), real & (eig.real < -1e-12 * scale)
    where = f"(all eigenvalues: {format_eigenvalues(eig)}) at dt = {dt:g}"
    advice = (
        "Sample more densely (a shorter step), or fit a structured model with a constrained drift."
    )
    if zero.any():
        raise NoRealLogarithmError(
            f"the fitted A is singular: eigenvalue(s) {format_eigenvalues(eig[zero])} {where}. "
            "A mode that decays completely within one step has no logarithm, so its drift is not "
            f"identified. {advice}"
        )
    if negative.any():
        values = np.sort(eig[negative].real)
        clusters = np.split(values, np.flatnonzero(np.diff(values) > 1e-8 * scale) + 1)
        if all(len(c) % 2 == 0 for c in clusters):
            reason = (
                "Each occurs an even number of times, so a real logarithm can exist (when its "
                "Jordan blocks pair up), but not the principal one: the drift would oscillate at "
                "exactly the Nyquist frequency pi / dt, which this step cannot identify."
            )
        else:
            reason = "No real matrix logarithm exists, so no LTI SDE reproduces A at this step."
        raise NoRealLogarithmError(
            f"the fitted A has eigenvalue(s) {format_eigenvalues(eig[negative])} on the negative "
            f"real axis {where}. {reason} {advice}"
        )
    A_inv_T = np.linalg.solve(A, np.eye(d)).T
    block = np.block([[A, Sigma @ A_inv_T], [np.zeros((d, d)), A_inv_T]])
    log = scipy.linalg.logm(block)
    if np.iscomplexobj(log):
        log = log.real
    log = log / dt
    return log[:d, :d], 0.5 * (log[:d, d:] + log[:d, d:].T)


def format_eigenvalues(eig) -> str:
    """Eigenvalues as `[-0.5, 0.2+0.3i]`: real ones without an imaginary part, 6 digits."""
    scale = max(1.0, float(np.abs(eig).max())) if np.size(eig) else 1.0

    def one(z):
        if abs(z.imag) <= 1e-10 * scale:
            return f"{z.real:.6g}"
        return f"{z.real:.6g}{z.imag:+.6g}i"

    return "[" + ", ".join(one(complex(z)) for z in eig) + "]"
