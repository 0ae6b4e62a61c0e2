"""Input validation shared by the public entry points.

Shape and dtype checks always run (shapes and dtypes are static, even under `jax.jit`). Value
checks (finiteness, symmetry, positive semi-definiteness, increasing times) run only on concrete
arrays: inside a trace the values are unknown and NaNs are left to propagate.

Error types: `TypeError` when an argument is not of the expected kind at all (not a numeric
array, a boolean or complex array, a string where a number is expected, not a random key);
`ValueError` when it is of the right kind but has the wrong shape or value. Every message names
the argument in backticks and says what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import operator
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

#: Relative tolerance of the symmetry and PSD checks: a covariance `M` passes when
#: `max|M - M^T| <= SYM_RTOL * max(1, max|M|)` and its smallest eigenvalue is
#: `>= -PSD_RTOL * max(1, max|M|)`.
SYM_RTOL = 1e-8
PSD_RTOL = 1e-8


def concrete(x) -> np.ndarray | None:
    """The value of `x` as a NumPy array, or None when `x` is traced.

    Input that is no array at all (ragged nested lists) comes back as an object array, so that
    the dtype checks report it by name instead of NumPy failing without one.
    """
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except (TypeError, ValueError):
        try:
            return np.asarray(x, dtype=object)
        except (TypeError, ValueError):
            return np.array(None, dtype=object)


def is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def float64(fn):
    """Run a public entry point with float64 enabled, unless it is called inside a trace.

    Estimation wants float64; enabling it here, rather than globally at import time, leaves the
    user's own JAX configuration alone. Inside a caller's `jit`/`grad`/`vmap` the caller's
    dtypes rule, so nothing is switched there. Where the caller runs JAX without x64, the JAX
    arrays of the result come back as NumPy arrays (`to_numpy`): a float64 JAX array used
    outside this call would be truncated to float32, with a warning, by the next JAX operation.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if is_traced((args, kwargs)):
            return fn(*args, **kwargs)
        if jax.config.jax_enable_x64:
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return to_numpy(fn(*args, **kwargs))

    return wrapper


def to_numpy(tree):
    """`tree` with every JAX array as a NumPy array of the same dtype (0-d ones as NumPy scalars,
    e.g. `np.float64`); random keys stay JAX arrays.

    Goes through pytrees (NamedTuples such as `SDEParams`, tuples, lists), dicts (keeping their
    order) and dataclass instances (their public fields; private ones such as
    `EMResult._context` are left as they are). Anything else (ArviZ data, functions, strings)
    comes back unchanged.
    """
    return jax.tree.map(_leaf_to_numpy, tree, is_leaf=_converted_here)


def _converted_here(x) -> bool:
    """Dicts (`jax.tree` would sort their keys) and dataclass instances (no pytrees)."""
    return type(x) is dict or (dataclasses.is_dataclass(x) and not isinstance(x, type))


def _leaf_to_numpy(x):
    if type(x) is dict:
        return {k: to_numpy(v) for k, v in x.items()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        public = [f.name for f in dataclasses.fields(x) if f.init and not f.name.startswith("_")]
        return dataclasses.replace(x, **{k: to_numpy(getattr(x, k)) for k in public})
    if (
        isinstance(x, jax.Array)
        and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
        and x.is_fully_addressable
    ):
        a = np.asarray(x)
        return a[()] if a.ndim == 0 else a
    return x


def check_ndim_shape(name: str, x, expected: tuple, what: str = "") -> None:
    """`x.shape == expected`, else a ValueError naming `name`."""
    if tuple(np.shape(x)) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"`{name}` must have shape {tuple(expected)}{extra}; got {np.shape(x)}.")


def check_real_dtype(name: str, dtype) -> None:
    """A real number dtype (integer or floating), else a TypeError naming `name`.

    Booleans are not numbers here (a boolean `y` or `times` is a mistake, not data), and complex
    values have no place in a real SDE.
    """
    if jax.dtypes.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"`{name}` must be real; got dtype {dtype}.")
    if not (jax.dtypes.issubdtype(dtype, np.integer) or jax.dtypes.issubdtype(dtype, np.floating)):
        raise TypeError(
            f"`{name}` must be a numeric array (integer or floating point); got dtype {dtype}."
        )


def as_real_array(x, name: str = "value") -> Array:
    """`x` as a JAX array of its own real dtype (integer or floating point).

    Raises:
        TypeError: naming `name` when `x` is not a real numeric array: strings, objects, ragged
            nested lists, booleans and complex numbers are refused.
    """
    try:
        arr = jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numeric array; {err}") from None
    check_real_dtype(name, arr.dtype)
    return arr


def as_float_array(x, name: str = "value") -> Array:
    """`x` as a JAX array of the default float dtype (float64 inside sdessm's entry points);
    integer arrays are converted.

    Raises:
        TypeError: naming `name` when `x` is not a real numeric array (see `as_real_array`).
    """
    return as_real_array(x, name).astype(jnp.result_type(float))


def check_finite(name: str, x, *, allow_nan: bool = False) -> None:
    """A real numeric array (dtype checked always) with no NaN or inf (values checked when
    concrete); `allow_nan` admits NaN, the missing value of `y`."""
    v = concrete(x)
    if v is None:
        check_real_dtype(name, x.dtype)
        return
    check_real_dtype(name, v.dtype)
    if allow_nan:
        if np.isinf(v).any():
            raise ValueError(f"`{name}` contains inf; only NaN (missing) is allowed.")
    elif not np.isfinite(v).all():
        raise ValueError(f"`{name}` must be finite; it contains NaN or inf.")


def check_covariance(name: str, x) -> None:
    """Square (in the last two axes), finite, symmetric and PSD within the tolerances above:
    `max|M - M^T| <= 1e-8 * max(1, max|M|)` and smallest eigenvalue `>= -1e-8 * max(1, max|M|)`
    (`SYM_RTOL`, `PSD_RTOL`)."""
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
        raise ValueError(
            f"`{name}` must be symmetric (to {SYM_RTOL:g} relative); max |M - M^T| = {asym:.3g}."
        )
    lam = float(np.linalg.eigvalsh(0.5 * (v + np.swapaxes(v, -1, -2))).min())
    if lam < -PSD_RTOL * scale:
        raise ValueError(
            f"`{name}` must be positive semi-definite (smallest eigenvalue >= -{PSD_RTOL:g} "
            f"relative); its smallest eigenvalue is {lam:.3g}."
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


def check_inputs(inputs, T: int, m: int, num_sequences: int | None, what: str = "inputs"):
    """Known inputs `(T, m)` (shared by the sequences) or `(B, T, m)` (one per sequence): finite
    everywhere (inputs are known, never missing); returned as an array of the float dtype.

    Raises:
        ValueError: a wrong shape, or NaN or inf, naming the row and column (and sequence).
    """
    v = as_float_array(inputs, what)
    shapes = f"({T}, {m})" + (f" or ({num_sequences}, {T}, {m})" if num_sequences else "")
    if (
        v.shape[-2:] != (T, m)
        or v.ndim not in (2, 3)
        or (v.ndim == 3 and v.shape[0] != num_sequences)
    ):
        raise ValueError(
            f"`{what}` must have shape {shapes} (T = {T} times, m = {m} inputs of the gains "
            f"`B`/`D`); got {v.shape}."
        )
    c = concrete(v)
    if c is None:
        check_real_dtype(what, v.dtype)
    elif not np.isfinite(c).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(c))[0])
        where = f"row {first[-2]}, column {first[-1]}"
        if len(first) == 3:
            where = f"sequence {first[0]}, " + where
        raise ValueError(
            f"`{what}` must be finite (inputs are known; NaN is no missing input): "
            f"{c[first]} at {where} (0-based)."
        )
    return v


def check_something_observed(y, what: str) -> None:
    """Data a fit can learn from: some observed value, and one in every column of `y` (..., p).

    Raises:
        ValueError: every entry is NaN, or a column is; `what` says what would be estimated
            from nothing.
    """
    observed = ~np.isnan(np.asarray(y, dtype=float))
    if not observed.any():
        raise ValueError(f"`y` has no observed value (every entry is NaN): {what}.")
    empty = np.flatnonzero(~observed.reshape(-1, observed.shape[-1]).any(axis=0))
    if empty.size:
        raise ValueError(
            f"column {int(empty[0])} of `y` has no observed value: {what} for it; leave the "
            "column out."
        )


def check_count(name: str, value, minimum: int = 1, *, or_none: bool = False) -> int | None:
    """`value` as an int, checked to be an integer (Python or NumPy, not bool) `>= minimum`.

    Raises:
        TypeError: `value` is not a number (a string, a bool, a list).
        ValueError: a number that is not an integer (2.5, also 2.0) or is below `minimum`.
    """
    if value is None and or_none:
        return None
    expected = f"`{name}` must be >= {minimum} (an integer){' or None' if or_none else ''}"
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{expected}; got {value!r}.")
    try:
        n = operator.index(value)
    except TypeError:
        if isinstance(value, numbers.Real):
            raise ValueError(f"{expected}; got {value!r}.") from None
        raise TypeError(f"{expected}; got {type(value).__name__} {value!r}.") from None
    if n < minimum:
        raise ValueError(f"{expected}; got {value!r}.")
    return n


def check_nonnegative(name: str, value) -> float:
    """`value` as a float, checked to be a real number `>= 0` (not NaN).

    Raises:
        TypeError: `value` is not a real number.
        ValueError: it is negative or NaN.
    """
    expected = f"`{name}` must be >= 0 (a real number)"
    real = isinstance(value, numbers.Real) or (
        np.ndim(value) == 0
        and hasattr(value, "dtype")
        and (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating))
    )
    if isinstance(value, bool | np.bool_) or not real:
        raise TypeError(f"{expected}; got {type(value).__name__} {value!r}.")
    if not float(value) >= 0:
        raise ValueError(f"{expected}; got {value!r}.")
    return float(value)


def check_key(name: str, key) -> None:
    """A single JAX random key: a typed key (`jax.random.key`) of shape `()`, or a raw
    `uint32` key (`jax.random.PRNGKey`) of shape `(2,)` (or `(n,)` for other generators)."""
    dtype = getattr(key, "dtype", None)
    shape = np.shape(key) if dtype is not None else None
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
        raise ValueError(f"`{name}` must be a single random key (shape ()); got shape {shape}.")
    if dtype == np.uint32 and len(shape) == 1:
        return
    got = f"dtype {dtype}, shape {shape}" if dtype is not None else type(key).__name__
    raise TypeError(f"`{name}` must be a JAX random key, e.g. `jax.random.key(0)`; got {got}.")


def progress_bar():
    """tqdm's notebook bar in Jupyter when ipywidgets is there, else the text bar, silently."""
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm
