"""Input validation shared by the public entry points.

Shape checks always run (shapes are static, even under `jax.jit`). Value checks (finiteness,
symmetry, positive semi-definiteness, increasing times) run only on concrete arrays: inside a
trace the values are unknown and NaNs are left to propagate.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

#: Relative tolerance of the symmetry and PSD checks: a covariance `M` passes when
#: `max|M - M^T| <= SYM_RTOL * max(1, max|M|)` and its smallest eigenvalue is
#: `>= -PSD_RTOL * max(1, max|M|)`.
SYM_RTOL = 1e-8
PSD_RTOL = 1e-8


def concrete(x) -> np.ndarray | None:
    """The value of `x` as a NumPy array, or None when `x` is traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def float64(fn):
    """Run a public entry point with float64 enabled, unless it is called inside a trace.

    Estimation wants float64; enabling it here, rather than globally at import time, leaves the
    user's own JAX configuration alone. Inside a caller's `jit`/`grad`/`vmap` the caller's
    dtypes rule, so nothing is switched there.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if is_traced((args, kwargs)):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


def check_ndim_shape(name: str, x, expected: tuple, what: str = "") -> None:
    """`x.shape == expected`, else a ValueError naming `name`."""
    if tuple(np.shape(x)) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"`{name}` must have shape {tuple(expected)}{extra}; got {np.shape(x)}.")


def check_finite(name: str, x, *, allow_nan: bool = False) -> None:
    v = concrete(x)
    if v is None:
        return
    if not np.issubdtype(v.dtype, np.number) and v.dtype != np.bool_:
        raise TypeError(f"`{name}` must be a numeric array; got dtype {v.dtype}.")
    if np.iscomplexobj(v):
        raise TypeError(f"`{name}` must be real; got a complex array.")
    if allow_nan:
        if np.isinf(v).any():
            raise ValueError(f"`{name}` contains inf; only NaN (missing) is allowed.")
    elif not np.isfinite(v).all():
        raise ValueError(f"`{name}` must be finite; it contains NaN or inf.")


def check_covariance(name: str, x) -> None:
    """Square (in the last two axes), finite, symmetric and PSD within the tolerances above."""
    shape = np.shape(x)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"`{name}` must be a square covariance matrix; got shape {shape}.")
    check_finite(name, x)
    v = concrete(x)
    if v is None or v.size == 0:
        return
    scale = max(1.0, float(np.abs(v).max()))
    asym = float(np.abs(v - np.swapaxes(v, -1, -2)).max())
    if asym > SYM_RTOL * scale:
        raise ValueError(f"`{name}` must be symmetric; max |M - M^T| = {asym:.3g}.")
    lam = float(np.linalg.eigvalsh(0.5 * (v + np.swapaxes(v, -1, -2))).min())
    if lam < -PSD_RTOL * scale:
        raise ValueError(
            f"`{name}` must be positive semi-definite; its smallest eigenvalue is {lam:.3g}."
        )


def check_times(name: str, times, num_timesteps: int | None = None) -> None:
    """Times of shape (T,) or (B, T), finite and strictly increasing along the last axis."""
    shape = np.shape(times)
    if len(shape) not in (1, 2):
        raise ValueError(f"`{name}` must have shape (T,) or (B, T); got {shape}.")
    if num_timesteps is not None and shape[-1] != num_timesteps:
        raise ValueError(
            f"`{name}` has {shape[-1]} entries per sequence but `y` has T = {num_timesteps}."
        )
    check_finite(name, times)
    v = concrete(times)
    if v is None or shape[-1] < 2:
        return
    steps = np.diff(v, axis=-1)
    bad = np.argwhere(steps <= 0)
    if bad.size:
        idx = tuple(bad[0])
        k = idx[-1]
        raise ValueError(
            f"`{name}` must be strictly increasing; step {k} -> {k + 1} has length "
            f"{float(steps[idx]):.6g}."
        )


def check_dt(name: str, dt) -> None:
    check_finite(name, dt)
    v = concrete(dt)
    if v is not None and (v <= 0).any():
        raise ValueError(f"`{name}` must be > 0; got {v.min() if v.ndim else float(v)}.")


def check_observations(y, p: int) -> None:
    """`y` of shape (T, p) or (B, T, p); NaN (missing) allowed, inf not."""
    shape = np.shape(y)
    if len(shape) not in (2, 3):
        raise ValueError(f"`y` must have shape (T, p) or (B, T, p); got {shape}.")
    if shape[-1] != p:
        raise ValueError(f"`y` has {shape[-1]} columns but the model observes p = {p} values.")
    if shape[-2] < 1:
        raise ValueError("`y` must hold at least one time step.")
    check_finite("y", y, allow_nan=True)
