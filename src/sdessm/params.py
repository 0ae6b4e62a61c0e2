r"""Model parameters: the continuous-time SDE and its discrete-time twin, as JAX pytrees.

Both are NamedTuples, so `jax.jit`, `jax.vmap` and `jax.grad` take them as they are. Validation
comes in two parts. Construction (also through `_replace` and `_make`) checks the trailing "core"
dimensions of every field against `d` (from `mu1`) and `p` (from `H`): shapes only, a couple of
microseconds, cheap under `jax.jit` too; leading axes (per-step fields, a batch axis for
`jax.vmap`) are free there. The full check, `params.validate()`, also checks leading axes, dtypes
and values; every public entry point of sdessm calls it once, at the boundary, and inside the
numerical code the fields are trusted.

Trees that are no parameters share the structure: `in_axes` prefixes such as
`LGSSMParams(0, 0, None, None, None, None, None)`, or trees of shardings. Construction checks only
when every field has a shape (an array, a tracer, a `jax.ShapeDtypeStruct`, a nested list of
numbers). JAX itself rebuilds the classes without the check (they are registered as pytree nodes
of their own): the trees it makes in `jax.tree.map`, `jax.jacfwd` or `jax.vmap(..., out_axes=1)`
are plumbing, with leaves of any shape.

On a time grid, an `SDEParams` becomes its exact `LGSSMParams` (`discretize_params`, the method
`SDEParams.discretize`, and `on_grid`, the rule that every entry point shares), with the matrix
exponentials of `sdessm.discretize`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import (
    as_float_array,
    check_covariance,
    check_dt,
    check_finite,
    check_ndim_shape,
    check_times,
    concrete,
    float64,
)
from .discretize import discretize_grouped, discretize_steps, group_steps, time_steps


class _SDEFields(NamedTuple):
    """The fields of `SDEParams`; construction is checked by the subclass."""

    F: Float[Array, "d d"]  # drift
    L: Float[Array, "d m"]  # diffusion; Q = L L^T
    H: Float[Array, "p d"]  # observation matrix
    u: Float[Array, " p"]  # observation offset
    R: Float[Array, "p p"]  # observation noise covariance
    mu1: Float[Array, " d"]  # mean of x_1
    P1: Float[Array, "d d"]  # covariance of x_1
    B: Float[Array, "d m"] | None = None  # input gain in the drift (None: no inputs there)
    D: Float[Array, "*T p m"] | None = None  # input gain in the observations


class SDEParams(_SDEFields):
    r"""LTI SDE $dx = F x\,dt + L\,dW$, observed as $y_k = H x(t_k) + u + r_k$, $r_k \sim N(0, R)$.

    The initial state $x_1 \sim N(\mu_1, P_1)$ is the state at the first observation time.

    The fields, in order: the drift `F (d, d)`, the diffusion `L (d, m)` ($Q = L L^\top$), the
    observation matrix `H (p, d)`, offset `u (p,)` and noise covariance `R (p, p)`, and the mean
    `mu1 (d,)` and covariance `P1 (d, d)` of $x_1$. Construction checks these trailing shapes
    (leading axes are free there: a batch axis for `jax.vmap`, per-step `H`, `u`, `R`);
    `validate` checks the rest.

    Raises:
        ValueError: at construction (and `_replace`), naming a field whose trailing shape does
            not match `d` (from `mu1`) and `p` (from `H`).

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> ou = sdessm.SDEParams(F=-jnp.eye(1), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=0.1 * jnp.eye(1), mu1=jnp.zeros(1), P1=0.5 * jnp.eye(1))
        >>> ou.validate().state_dim, ou.Q.tolist()
        (1, [[1.0]])
    """

    __slots__ = ()

    def __new__(cls, F, L, H, u, R, mu1, P1, B=None, D=None):
        self = tuple.__new__(cls, (F, L, H, u, R, mu1, P1, B, D))
        _check_core(self, _SDE_CORE)
        return self

    @classmethod
    def _make(cls, iterable) -> SDEParams:
        return cls(*iterable)  # `_replace` comes here too

    def __reduce__(self):
        return _rebuild, (type(self), tuple(self))  # a copy is no new construction

    @property
    def state_dim(self) -> int:
        return int(np.shape(self.mu1)[-1])

    @property
    def obs_dim(self) -> int:
        return int(np.shape(self.H)[-2])

    @property
    def input_dim(self) -> int:
        """The number of input channels m (0 without inputs)."""
        return _input_dim(self)

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
        p = check_emissions(self.H, self.u, self.R, d, num_timesteps)
        check_ndim_shape("P1", self.P1, (d, d), f"d = {d} from `mu1`")
        check_input_gains(self.B, self.D, d, p, num_timesteps, per_step_B=False)
        for name in ("F", "L", "H", "u", "mu1", "B", "D"):
            if getattr(self, name) is not None:
                check_finite(name, getattr(self, name))
        check_covariance("R", self.R)
        check_covariance("P1", self.P1)
        return self

    def discretize(self, times=None, *, dt=None) -> LGSSMParams:
        """The exact discrete-time model on a time grid; see `sdessm.discretize_params`."""
        return discretize_params(self, times, dt=dt)


class _LGSSMFields(NamedTuple):
    """The fields of `LGSSMParams`; construction is checked by the subclass."""

    A: Float[Array, "*steps d d"]  # transition matrix
    Sigma: Float[Array, "*steps d d"]  # transition noise covariance
    H: Float[Array, "*T p d"]
    u: Float[Array, "*T p"]
    R: Float[Array, "*T p p"]
    mu1: Float[Array, " d"]
    P1: Float[Array, "d d"]
    B: Float[Array, "*steps d m"] | None = None  # discrete input matrix B_k
    D: Float[Array, "*T p m"] | None = None


class LGSSMParams(_LGSSMFields):
    r"""Linear-Gaussian state-space model $x_{k+1} = A_k x_k + q_k$, $y_k = H_k x_k + u_k + r_k$.

    `A` and `Sigma` are `(d, d)` (shared by all transitions) or `(T-1, d, d)` (one per
    transition, e.g. irregular steps). `H`, `u`, `R` are `(p, d)`, `(p,)`, `(p, p)` (shared) or
    carry a leading axis of length `T` (per-step emissions $H_k, u_k, R_k$).

    Construction checks the trailing shapes, as for `SDEParams`: `A` and `Sigma` `(..., d, d)`,
    `H (..., p, d)`, `u (..., p)`, `R (..., p, p)`, `mu1 (..., d)`, `P1 (..., d, d)`.

    Raises:
        ValueError: at construction (and `_replace`), naming a field whose trailing shape does
            not match `d` (from `mu1`) and `p` (from `H`).
    """

    __slots__ = ()

    def __new__(cls, A, Sigma, H, u, R, mu1, P1, B=None, D=None):
        self = tuple.__new__(cls, (A, Sigma, H, u, R, mu1, P1, B, D))
        _check_core(self, _LGSSM_CORE)
        return self

    @classmethod
    def _make(cls, iterable) -> LGSSMParams:
        return cls(*iterable)  # `_replace` comes here too

    def __reduce__(self):
        return _rebuild, (type(self), tuple(self))  # a copy is no new construction

    @property
    def state_dim(self) -> int:
        return int(np.shape(self.mu1)[-1])

    @property
    def obs_dim(self) -> int:
        return int(np.shape(self.H)[-2])

    @property
    def input_dim(self) -> int:
        """The number of input channels m (0 without inputs)."""
        return _input_dim(self)

    def time_varying(self) -> dict[str, bool]:
        """Which fields carry a leading time axis (`B` and `D` False when they are None)."""
        base = {"A": 2, "Sigma": 2, "H": 2, "u": 1, "R": 2, "mu1": 1, "P1": 2, "B": 2, "D": 2}
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
        check_input_gains(self.B, self.D, d, p, T, per_step_B=True)
        for name in ("A", "H", "u", "mu1", "B", "D"):
            if getattr(self, name) is not None:
                check_finite(name, getattr(self, name))
        for name in ("Sigma", "R", "P1"):
            check_covariance(name, getattr(self, name))
        return self


# Trailing ("core") dimensions of each field, in field order: "d" the state dimension (from
# `mu1`), "p" the observation dimension (from `H`), "m" free (the noise dimension of `L`), "n"
# the input dimension (free, the same for `B` and `D`).
_SDE_CORE = ("dd", "dm", "pd", "p", "pp", "d", "dd", "dn", "pn")
_LGSSM_CORE = ("dd", "dd", "pd", "p", "pp", "d", "dd", "dn", "pn")


def _check_core(params, cores) -> None:
    """The trailing dimensions of every field match `d` (from `mu1`) and `p` (from `H`).

    The common case, every field an array of the right shape and no inputs, is decided in one
    expression; any other (inputs, a wrong shape, a field with no shape) goes to `_core_error`.
    """
    try:
        s0, s1, H, u, R, mu1, P1 = [x.shape for x in params[:7]]
        d, p = mu1[-1], H[-2]
        dd = (d, d)
        if (
            s0[-2:] == dd
            and (s1[-2:] == dd if cores[1] == "dd" else s1[-2:-1] == (d,))
            and H[-2:] == (p, d)
            and u[-1:] == (p,)
            and R[-2:] == (p, p)
            and P1[-2:] == dd
            and params[7] is None
            and params[8] is None
        ):
            return
    except Exception:  # no shape, or too few axes: looked at closely below
        pass
    message = _core_error(params, cores)
    if message is not None:
        raise ValueError(message)


def _shape_of(x) -> tuple | None:
    """The shape of an array, tracer, `jax.ShapeDtypeStruct` or nested list of numbers; None for
    anything else (None, a Python number such as an `in_axes` entry, an arbitrary object)."""
    shape = getattr(x, "shape", None)
    if isinstance(shape, tuple):
        return tuple(shape)
    if type(x) not in (list, tuple):
        return None
    try:  # nested lists of numbers; ragged or odd ones are left to `validate`
        return tuple(np.shape(x))
    except Exception:
        return None


def _core_error(params, cores) -> str | None:
    """What is wrong with the trailing shapes, or None when one of the seven model fields has no
    shape (the tree holds no parameters: an `in_axes` prefix, a tree of shardings). `B` and `D`
    may be None (no inputs there)."""
    shapes = [_shape_of(x) for x in params]
    if any(s is None for s in shapes[:7]):
        return None
    mu1, H = shapes[5], shapes[2]
    if not mu1:
        return f"`mu1` must have shape (..., d), a vector of length d; got {mu1}."
    inputs = [s for s in shapes[7:] if s]
    dims = {"d": mu1[-1], "p": H[-2] if len(H) >= 2 else None}
    dims["n"] = inputs[0][-1] if inputs else None
    src = "B" if shapes[7] else "D"
    for name, core, shape, x in zip(params._fields, cores, shapes, params, strict=True):
        if x is None and name in ("B", "D"):
            continue  # no inputs in this part of the model
        if shape is None:
            return f"`{name}` must be an array or None; got {type(x).__name__}."
        free = "mp" if name == "H" else "m"  # p is read off H; m (noise dimension of L) is free
        tail = shape[-len(core) :]
        if len(tail) == len(core) and all(
            c in free or n == dims[c] for c, n in zip(core, tail, strict=True)
        ):
            continue
        expected = ", ".join(c if c in free else str(dims[c]) for c in core)
        source = " and ".join(
            f"{c} = {dims[c]} from `{ {'d': 'mu1', 'p': 'H'}[c] }`"
            if c != "n"
            else f"{dims[c]} input(s) from `{src}`"
            for c in "dpn"
            if c in core and c not in free
        )
        return f"`{name}` must have shape (..., {expected}) ({source}); got {shape}."
    return None


def _rebuild(cls, fields):
    """`cls` holding `fields` as they are: a pickled or copied tree is no new construction (one
    pickled before the input fields existed gets None for them)."""
    fields = tuple(fields)
    return tuple.__new__(cls, fields + (None,) * (len(cls._fields) - len(fields)))


def _register(cls) -> None:
    """A pytree node of its own, so that JAX rebuilds it without the construction check (its
    trees in `jax.tree.map`, `jax.jacfwd`, `out_axes` hold leaves of any shape); its key paths
    are those of a NamedTuple (`.F`, `.L`, ...)."""
    keys = tuple(jax.tree_util.GetAttrKey(name) for name in cls._fields)
    jax.tree_util.register_pytree_with_keys(
        cls,
        lambda x: (tuple(zip(keys, x, strict=True)), None),
        lambda _, children: tuple.__new__(cls, children),
        lambda x: (x, None),
    )


_register(SDEParams)
_register(LGSSMParams)


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


def as_arrays(params):
    """The same parameters with every field an array of the default float dtype (None stays)."""
    fields = zip(params._fields, params, strict=True)
    return type(params)(*(x if x is None else as_float_array(x, name) for name, x in fields))


def _input_dim(params) -> int:
    gains = [g for g in (params.B, params.D) if g is not None]
    return int(np.shape(gains[0])[-1]) if gains else 0


def check_input_gains(B, D, d: int, p: int, T: int | None, per_step_B: bool) -> None:
    """Shapes of the input gains: `B` `(d, m)` (or `(T-1, d, m)` per transition when
    `per_step_B`), `D` `(p, m)` or `(T, p, m)`, the same m for both; None is no inputs."""
    m = _input_dim(SimpleNamespace(B=B, D=D))
    if B is not None:
        if per_step_B:
            _check_form("B", B, (d, m), T, 1, d, p)
        elif np.shape(B) != (d, m):
            raise ValueError(
                f"`B` must have shape ({d}, m) (d = {d} from `mu1`); got {np.shape(B)}."
            )
    if D is not None:
        if np.ndim(D) not in (2, 3) or np.shape(D)[-1] != m:
            raise ValueError(
                f"`D` must have shape ({p}, m) or (T, {p}, m) with the m = {m} inputs of `B`; "
                f"got {np.shape(D)}."
            )
        _check_form("D", D, (p, m), T, 0, d, p)


# ------------------------------------------------------------------ on a time grid


@float64
def discretize_params(
    params: SDEParams, times: Float[ArrayLike, " T"] | None = None, *, dt=None
) -> LGSSMParams:
    r"""The exact discrete-time model of an `SDEParams` on a time grid.

    Give either `times` (shape `(T,)`, strictly increasing) or a uniform step `dt`. Equal steps
    (to 12 significant digits) share one matrix exponential; when all steps are equal, `A` and
    `Sigma` are `(d, d)`, otherwise `(T-1, d, d)`. The emission fields are copied.

    Raises:
        ValueError: invalid parameters (see `SDEParams.validate`), `times` not `(T,)`, not finite
            or not strictly increasing, `dt` not a finite scalar > 0, or both or neither given.
        TypeError: `params` not an `SDEParams`, or an argument not a real numeric array.

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
        >>> lg = rw.discretize(jnp.array([0.0, 0.5, 1.0, 3.0]))   # random walk: Sigma = Q dt
        >>> lg.Sigma[:, 0, 0].tolist()
        [0.5, 0.5, 2.0]
    """
    if not isinstance(params, SDEParams):
        raise TypeError(f"`params` must be SDEParams; got {type(params).__name__}.")
    params = as_arrays(params.validate())
    if (times is None) == (dt is None):
        raise ValueError("give exactly one of `times` (T,) and `dt` (a uniform step).")
    if times is not None:
        times_arr = as_float_array(times, "times")
        if times_arr.ndim != 1:
            raise ValueError(f"`times` must have shape (T,); got {times_arr.shape}.")
        check_times("times", times_arr)
    return on_grid(params, times, dt)


def on_grid(params: SDEParams, times=None, dt=None) -> LGSSMParams:
    """The discrete model of `params` (validated, fields arrays) on checked `times` `(T,)` or
    `(B, T)`, or on a uniform step `dt` (checked here): the one rule behind `discretize_params`
    and `sdessm.problem.resolve`. Equal steps share one matrix exponential; a grid `(T,)` of
    equal steps gives one `(d, d)` pair, one grid per sequence keeps its `(B, T-1, d, d)`.

    With an input gain `B`, the inputs are held constant over each step (zero-order hold) and
    the discrete `B_k` is the top-right block of the exponential of `[[F, B], [0, 0]] h_k`, the
    transition of the state augmented with the (constant) inputs: the same Van Loan series and
    doubling give `A`, `Sigma` and `B_k` at once.
    """
    if dt is not None:
        dt = as_float_array(dt, "dt")
        check_ndim_shape("dt", dt, (), "a scalar step; use `times` for irregular steps")
        check_dt("dt", dt)
        A, Sigma, B = transitions(params, dt, grouped=False)
    else:
        steps = time_steps(times)
        A, Sigma, B = transitions(params, steps)
        if np.ndim(steps) == 1 and concrete(steps) is not None and steps.size:
            if len(group_steps(concrete(steps))[0]) == 1:  # one step: one shared model
                A, Sigma, B = A[0], Sigma[0], None if B is None else B[0]
    return LGSSMParams(A, Sigma, params.H, params.u, params.R, params.mu1, params.P1, B, params.D)


def transitions(params: SDEParams, steps, grouped: bool = True, Q=None):
    """`(A, Sigma, B)` of the steps `steps` (any shape): the exact transition, its noise
    covariance and the discrete input matrix (None without `B`), one exponential per distinct
    concrete step when `grouped`. With inputs the state is augmented with them (held constant
    over the step): `[[A, B_k], [0, I]]` is the exponential of `[[F, B], [0, 0]] h`, so the
    same Van Loan series and doubling give all three. `Q` overrides `params.Q`."""
    F, d = params.F, params.state_dim
    Q = params.Q if Q is None else Q
    if params.B is not None:
        n = params.input_dim
        F = jnp.block([[F, params.B], [jnp.zeros((n, d + n), F.dtype)]])
        Q = jnp.zeros((d + n, d + n), F.dtype).at[:d, :d].set(Q)
    A, Sigma = discretize_grouped(F, Q, steps) if grouped else discretize_steps(F, Q, steps)
    B = None if params.B is None else A[..., :d, d:]
    return A[..., :d, :d], Sigma[..., :d, :d], B


def continuous_discrete(state: SDEParams, reps, groups, Q=None):
    """The discrete model of a continuous state on the grouped steps, per transition.

    `Q` overrides `state.L @ state.L.T` (standard errors work with Q itself).
    """
    A_g, Sigma_g, B_g = transitions(state, reps, grouped=False, Q=Q)
    B = None if B_g is None else B_g[groups]
    return A_g, Sigma_g, LGSSMParams(A_g[groups], Sigma_g[groups], *state[2:7], B, state.D)


def discrete_on_groups(state: SDEParams, reps, groups) -> LGSSMParams:
    """The discrete model of `continuous_discrete`, with one `(d, d)` transition (and `B`) when
    one grid of a single step size is shared by all sequences."""
    _, _, discrete = continuous_discrete(state, reps, groups)
    if np.ndim(groups) == 1 and np.shape(reps)[0] == 1:
        B = None if discrete.B is None else discrete.B[0]
        discrete = discrete._replace(A=discrete.A[0], Sigma=discrete.Sigma[0], B=B)
    return discrete
