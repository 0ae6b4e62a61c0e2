r"""Compiled CPU kernels of the Kalman recursions, called from JAX through its foreign function
interface (`jax.ffi`).

The kernels (`csrc/kalman.cc`, C++ built when sdessm is installed) run one sequence
at a time in plain loops: the filter, the log-likelihood alone, the log-likelihood with its
gradient, and the smoother. On a CPU a step of `lax.scan` costs a few microseconds of XLA's
per-operation overhead whatever the state dimension; a compiled loop costs what its arithmetic
costs. The gradient is not reverse-mode through the filter but the backward recursion of
de Jong (1989) and Koopman & Shephard (1992) (Fisher's identity; the formulas head the C++
file): one filter and one backward pass, inverting nothing but the innovation covariances, so
singular $\Sigma_k$ and $P_1$ are fine.

`sdessm.kalman` uses them for `method="compiled"` (and `"auto"`, the default of
`log_likelihood`, where they are available); derivatives of higher order than the first, and
forward-mode derivatives of the filter and smoother, come from the pure-JAX recursions.

The kernels are used when the shared library was built (`available()`), the computation runs
on the CPU in float64, and `SDESSM_COMPILED` is not `off`. `why_unavailable()` says why not.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp

from .params import LGSSMParams

#: the extension module's name (a shared library loaded with ctypes, not imported)
_LIBRARY = "sdessm._kalman"
_TARGETS = {
    "loglik": "SdessmLoglik",
    "filter": "SdessmFilter",
    "smoother": "SdessmSmoother",
    "grad": "SdessmLoglikGrad",
}


@functools.cache
def _load() -> str | None:
    """Register the kernels with XLA once; the reason they are unavailable, or None."""
    if os.environ.get("SDESSM_COMPILED", "").lower() in ("off", "0", "false", "no"):
        return "SDESSM_COMPILED is off"
    spec = importlib.util.find_spec(_LIBRARY)
    if spec is None or spec.origin is None:
        return "the compiled kernels were not built when sdessm was installed"
    try:
        lib = ctypes.CDLL(spec.origin)
        for name, symbol in _TARGETS.items():
            handler = jax.ffi.pycapsule(getattr(lib, symbol))
            jax.ffi.register_ffi_target(f"sdessm_{name}", handler, platform="cpu")
    except (OSError, AttributeError) as error:  # a library from another build, a missing symbol
        return f"the compiled kernels failed to load: {error}"
    return None


def why_unavailable() -> str | None:
    """Why the compiled kernels are not used (None when they are available)."""
    return _load()


def available() -> bool:
    """Whether the compiled kernels are built, loaded and switched on."""
    return _load() is None


def applies(params: LGSSMParams, y) -> bool:
    """Whether the kernels can run `params` on one sequence `y` `(T, p)`: `available()`, at
    least two steps, float64 throughout, and the default backend a CPU (decided when the
    program is traced)."""
    if not available() or y.shape[-2] < 2 or jax.default_backend() != "cpu":
        return False
    arrays = [y] + [getattr(params, k) for k in ("A", "Sigma", "H", "u", "R", "mu1", "P1")]
    return all(jnp.result_type(a) == jnp.float64 for a in arrays)


def arguments(params: LGSSMParams) -> tuple:
    """The kernels' inputs `(A, Q, H, u, R, mu1, P1)` for `T >= 2` steps, the first five with a
    leading axis of length one (shared) or the number of steps (`T - 1` transitions, `T`
    emissions)."""
    tv = params.time_varying()
    ranks = {"A": 2, "Sigma": 2, "H": 2, "u": 1, "R": 2}
    lead = [getattr(params, k) if tv[k] else getattr(params, k)[None] for k in ranks]
    return (*lead, params.mu1, params.P1)


def _call(name: str, outputs, args):
    return jax.ffi.ffi_call(f"sdessm_{name}", outputs, vmap_method="broadcast_all")(*args)


def loglik(args: tuple, y):
    """$\\log p(y)$ of one sequence `(T, p)` (NaN where missing); `args` from `arguments`."""
    return _call("loglik", jax.ShapeDtypeStruct((), jnp.float64), (*args, y))


def loglik_grad(args: tuple, y):
    """`(log p(y), gradient with respect to each of args)` of one sequence. The gradients with
    respect to the covariances are the symmetric ones."""
    shapes = [jax.ShapeDtypeStruct((), jnp.float64)]
    shapes += [jax.ShapeDtypeStruct(a.shape, jnp.float64) for a in args]
    value, *grads = _call("grad", shapes, (*args, y))
    return value, tuple(grads)


def filter_moments(args: tuple, y):
    """`(log p(y), predicted means (T, d), predicted covariances (T, d, d), filtered means,
    filtered covariances)` of one sequence."""
    T, d = y.shape[0], args[5].shape[0]
    m = jax.ShapeDtypeStruct((T, d), jnp.float64)
    P = jax.ShapeDtypeStruct((T, d, d), jnp.float64)
    return _call("filter", [jax.ShapeDtypeStruct((), jnp.float64), m, P, m, P], (*args, y))


def smoother_moments(args: tuple, y):
    """`(log p(y), smoothed means (T, d), smoothed covariances (T, d, d),
    Cov[x_{k+1}, x_k | y] (T - 1, d, d))` of one sequence."""
    T, d = y.shape[0], args[5].shape[0]
    shapes = [
        jax.ShapeDtypeStruct((), jnp.float64),
        jax.ShapeDtypeStruct((T, d), jnp.float64),
        jax.ShapeDtypeStruct((T, d, d), jnp.float64),
        jax.ShapeDtypeStruct((T - 1, d, d), jnp.float64),
    ]
    return _call("smoother", shapes, (*args, y))
