r"""Model parameters: the continuous-time SDE and its discrete-time twin, as JAX pytrees.

Both are NamedTuples, so `jax.jit`, `jax.vmap` and `jax.grad` take them as they are. Validation is
explicit (`params.validate()`), and every public entry point of sdessm calls it once, at the
boundary; inside the numerical code the fields are trusted.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_covariance, check_finite, check_ndim_shape, check_real_dtype


class SDEParams(NamedTuple):
    r"""LTI SDE $dx = F x\,dt + L\,dW$, observed as $y_k = H x(t_k) + u + r_k$, $r_k \sim N(0, R)$.

    The initial state $x_1 \sim N(\mu_1, P_1)$ is the state at the first observation time.

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> ou = sdessm.SDEParams(F=-jnp.eye(1), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=0.1 * jnp.eye(1), mu1=jnp.zeros(1), P1=0.5 * jnp.eye(1))
        >>> ou.validate().state_dim, ou.Q.tolist()
        (1, [[1.0]])
    """

    F: Float[Array, "d d"]  # drift
    L: Float[Array, "d m"]  # diffusion; Q = L L^T
    H: Float[Array, "p d"]  # observation matrix
    u: Float[Array, " p"]  # observation offset
    R: Float[Array, "p p"]  # observation noise covariance
    mu1: Float[Array, " d"]  # mean of x_1
    P1: Float[Array, "d d"]  # covariance of x_1

    @property
    def state_dim(self) -> int:
        return int(np.shape(self.mu1)[-1])

    @property
    def obs_dim(self) -> int:
        return int(np.shape(self.H)[-2])

    @property
    def Q(self) -> Float[Array, "d d"]:
        """Diffusion covariance $Q = L L^\\top$ (a NumPy array for a NumPy `L`: no float32
        round trip when JAX runs without x64)."""
        L = self.L if isinstance(self.L, np.ndarray | jax.Array) else np.asarray(self.L)
        return L @ L.T

    def validate(self, num_timesteps: int | None = None) -> SDEParams:
        """Check shapes and (for concrete arrays) values; return `self` unchanged.

        `H`, `u`, `R` may carry a leading axis of length T (per-step emissions), checked against
        `num_timesteps` when it is given. Every field must be finite; `R` and `P1` symmetric to
        `1e-8` and positive semi-definite to `-1e-8` (smallest eigenvalue), both relative to
        `max(1, max|M|)` (`sdessm._checks.SYM_RTOL`, `PSD_RTOL`). Inside a trace (`jax.jit`)
        only the shapes and dtypes are checked.

        Raises:
            ValueError: naming the field whose shape or value is wrong.
            TypeError: naming a field that is not a real numeric array (bool, complex, strings).
        """
        if np.ndim(self.mu1) != 1:
            raise ValueError(f"`mu1` must be a vector (d,); got shape {np.shape(self.mu1)}.")
        d = self.state_dim
        check_ndim_shape("F", self.F, (d, d), f"d = {d} from `mu1`")
        if np.ndim(self.L) != 2 or np.shape(self.L)[0] != d:
            raise ValueError(f"`L` must have shape ({d}, m); got {np.shape(self.L)}.")
        check_emissions(self.H, self.u, self.R, d, num_timesteps)
        check_ndim_shape("P1", self.P1, (d, d), f"d = {d} from `mu1`")
        for name in ("F", "L", "H", "u", "mu1"):
            check_finite(name, getattr(self, name))
        check_covariance("R", self.R)
        check_covariance("P1", self.P1)
        return self

    def discretize(self, times=None, *, dt=None) -> LGSSMParams:
        """The exact discrete-time model on a time grid; see `sdessm.discretize_params`."""
        from .discretize import discretize_params

        return discretize_params(self, times, dt=dt)


class LGSSMParams(NamedTuple):
    r"""Linear-Gaussian state-space model $x_{k+1} = A_k x_k + q_k$, $y_k = H_k x_k + u_k + r_k$.

    `A` and `Sigma` are `(d, d)` (shared by all transitions) or `(T-1, d, d)` (one per
    transition, e.g. irregular steps). `H`, `u`, `R` are `(p, d)`, `(p,)`, `(p, p)` (shared) or
    carry a leading axis of length `T` (per-step emissions $H_k, u_k, R_k$).
    """

    A: Float[Array, "*steps d d"]  # transition matrix
    Sigma: Float[Array, "*steps d d"]  # transition noise covariance
    H: Float[Array, "*T p d"]
    u: Float[Array, "*T p"]
    R: Float[Array, "*T p p"]
    mu1: Float[Array, " d"]
    P1: Float[Array, "d d"]

    @property
    def state_dim(self) -> int:
        return int(np.shape(self.mu1)[-1])

    @property
    def obs_dim(self) -> int:
        return int(np.shape(self.H)[-2])

    def time_varying(self) -> dict[str, bool]:
        """Which fields carry a leading time axis."""
        base = {"A": 2, "Sigma": 2, "H": 2, "u": 1, "R": 2, "mu1": 1, "P1": 2}
        return {k: np.ndim(getattr(self, k)) > n for k, n in base.items()}

    def validate(self, num_timesteps: int | None = None) -> LGSSMParams:
        """Check shapes (against `num_timesteps` T when given) and concrete values; return `self`.

        As `SDEParams.validate`; `Sigma`, `R` and `P1` are the covariances checked for symmetry
        and positive semi-definiteness (to `1e-8` relative).

        Raises:
            ValueError: naming the field whose shape or value is wrong.
            TypeError: naming a field that is not a real numeric array (bool, complex, strings).
        """
        if np.ndim(self.mu1) != 1:
            raise ValueError(f"`mu1` must be a vector (d,); got shape {np.shape(self.mu1)}.")
        d = self.state_dim
        T = num_timesteps
        p = check_emissions(self.H, self.u, self.R, d, T)
        for name in ("A", "Sigma"):
            _check_form(name, getattr(self, name), (d, d), T, 1, d, p)
        check_ndim_shape("P1", self.P1, (d, d), f"d = {d} from `mu1`")
        for name in ("A", "H", "u", "mu1"):
            check_finite(name, getattr(self, name))
        for name in ("Sigma", "R", "P1"):
            check_covariance(name, getattr(self, name))
        return self


def _check_form(name, x, base, T, offset, d, p):
    """`x` has shape `base` or (T - offset, *base)."""
    shape = tuple(np.shape(x))
    lead = "T-1" if offset else "T"
    axis = "transitions" if offset else "times"
    if shape == base:
        return
    if len(shape) == len(base) + 1 and shape[1:] == base:
        if T is not None and shape[0] != T - offset:
            raise ValueError(
                f"`{name}` has a leading axis of {shape[0]} {axis}; the data have "
                f"T = {T}, so it must be {T - offset} ({lead})."
            )
        return
    raise ValueError(
        f"`{name}` must have shape {base} or ({lead}, {', '.join(map(str, base))}) "
        f"(d = {d} from `mu1`, p = {p} from `H`); got {shape}."
    )


def check_emissions(H, u, R, d: int, T: int | None) -> int:
    """Shapes of shared `(p, d)`, `(p,)`, `(p, p)` or per-step `(T, ...)` emissions; returns p."""
    if np.ndim(H) not in (2, 3):
        raise ValueError(f"`H` must have shape (p, {d}) or (T, p, {d}); got {np.shape(H)}.")
    p = int(np.shape(H)[-2])
    _check_form("H", H, (p, d), T, 0, d, p)
    _check_form("u", u, (p,), T, 0, d, p)
    _check_form("R", R, (p, p), T, 0, d, p)
    return p


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


def as_arrays(params):
    """The same parameters with every field an array of the default float dtype."""
    fields = zip(params._fields, params, strict=True)
    return type(params)(*(as_float_array(x, name) for name, x in fields))
