r"""The one way from a user's arguments to the problem the recursions solve: `resolve` turns
`(params, y, times | dt)` into the discrete model on the grid, the data converted once, and the
static flags every pass needs (per-sequence grids, no NaN, one NaN pattern for all sequences).

The filter, smoother, log-likelihood, innovations, forecasts and EM all start here, so they
agree on what a grid, a missing value and a sequence are. The discrete model of an `SDEParams`
comes from `sdessm.params.on_grid`, the rule that `discretize_params` (and so `simulate`)
applies too.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import as_float_array, check_inputs, check_observations, check_times, concrete
from .params import LGSSMParams, SDEParams, as_arrays, on_grid


class Problem(NamedTuple):
    """A resolved problem: what `resolve` returns."""

    params: LGSSMParams  # the discrete model on the grid
    y: Float[Array, "*B T p"]  # the observations, converted once
    params_batched: bool  # one grid per sequence: `A`, `Sigma` carry a leading B axis
    complete: bool  # `y` is concrete and holds no NaN
    same_mask: bool  # every sequence has the NaN pattern of the first (True when complete)
    offset: Float[Array, "*B T d"] | None = None  # the inputs' response, added to state means


def is_complete(y) -> bool:
    """Whether `y` is concrete and holds no NaN (a faster update without masks applies).

    Test the caller's `y` before it is converted: inside a trace even a NumPy array becomes a
    tracer once it passes through `jnp.asarray`.
    """
    v = concrete(y)
    return v is not None and np.issubdtype(v.dtype, np.number) and not np.isnan(v).any()


def shares_mask(y) -> bool:
    """Whether `y` `(B, T, p)` is concrete and all its sequences have the NaN mask of the first."""
    return _shares_mask(concrete(y))


def _shares_mask(v) -> bool:
    if v is None or not np.issubdtype(v.dtype, np.floating):
        return False
    missing = np.isnan(v)
    return bool((missing == missing[:1]).all())


def mask_flags(y) -> tuple[bool, bool]:
    """`(complete, same_mask)` of `y` `(T, p)` or `(B, T, p)` as in `Problem`, from one NumPy
    view of the caller's `y` (before it is converted: see `is_complete`): static flags of the
    passes, which share one covariance recursion among sequences with one NaN pattern."""
    v = concrete(y)
    if v is None or not np.issubdtype(v.dtype, np.number):
        return False, False
    complete = not np.isnan(v).any()
    return complete, complete or v.ndim != 3 or _shares_mask(v)


def resolve(
    params: SDEParams | LGSSMParams,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, "*#B T"] | None = None,
    dt: float | None = None,
    inputs: Float[ArrayLike, "*#B T m"] | None = None,
) -> Problem:
    """Validate the public arguments and resolve them into a `Problem`.

    Known inputs leave the recursions as they are. The state is the deterministic response to
    the inputs, $s_1 = 0$, $s_{k+1} = A_k s_k + B_k v_k$, plus a state $z$ of the model
    without inputs; so $y_k - H_k s_k - D_k v_k = H_k z_k + u_k + r_k$. The problem holds those
    data and the model without inputs (every path, steady state and masks included, applies
    unchanged; the innovations and the log-likelihood are the same), and `offset` $= s$, which
    the passes add to the state means.

    Args:
        params: an `SDEParams` (with `times` or `dt`) or an `LGSSMParams` (without).
        y: observations `(T, p)` or `(B, T, p)`; NaN marks a missing value.
        times: observation times `(T,)` shared by the sequences, or `(B, T)`.
        dt: a uniform step instead of `times`.
        inputs: known inputs `(T, m)` shared by the sequences, or `(B, T, m)`, held over each
            step (zero-order hold); required when `params` has `B` or `D`, refused otherwise.

    Raises:
        ValueError: a wrong shape or value, `times` and `dt` both or neither given for an
            `SDEParams`, or either given for an `LGSSMParams`; `inputs` missing, not needed,
            of a wrong shape or not finite.
        TypeError: `params` of another type.
    """
    complete, same_mask = mask_flags(y)  # before the conversion (see `is_complete`)
    if isinstance(params, SDEParams):
        if times is not None and dt is not None:
            raise ValueError("give either `times` or `dt`, not both.")
        if times is None and dt is None:
            raise ValueError("an `SDEParams` needs the observation `times` (or a uniform `dt`).")
    elif isinstance(params, LGSSMParams):
        if times is not None or dt is not None:
            raise ValueError(
                "`times`/`dt` apply to `SDEParams`; an `LGSSMParams` already holds its steps."
            )
    else:
        raise TypeError(f"`params` must be SDEParams or LGSSMParams; got {type(params).__name__}.")
    params = as_arrays(params)
    y = as_float_array(y, "y")
    params.validate(num_timesteps=y.shape[-2] if y.ndim in (2, 3) else None)
    check_observations(y, params.obs_dim)
    batched = False
    if isinstance(params, SDEParams):
        if times is not None:
            times_arr = as_float_array(times, "times")
            check_times("times", times_arr, y.shape[-2])
            batched = times_arr.ndim == 2
            if batched and (y.ndim != 3 or y.shape[0] != times_arr.shape[0]):
                raise ValueError(
                    f"`times` of shape {times_arr.shape} gives one time grid per sequence, so `y` "
                    f"must be ({times_arr.shape[0]}, {y.shape[-2]}, p); got {y.shape}."
                )
        params = on_grid(params, times, dt)
    if not needs_inputs(params, inputs):
        return Problem(params, y, batched, complete, same_mask)
    T = y.shape[-2]
    v = check_inputs(inputs, T, params.input_dim, y.shape[0] if y.ndim == 3 else None)
    params, y, offset = fold_inputs(params, y, v, batched)
    return Problem(params, y, batched, complete, same_mask, offset)


def fold_inputs(params: LGSSMParams, y, v, batched: bool = False):
    """The model without inputs, the data less what the inputs add, and the state's response
    `(params, y - H s - D v, s)` (see `resolve`): `v` the checked inputs `(*B, T, m)`,
    `batched` as in `response`. Jittable."""
    offset = response(params, v, batched)
    if y.ndim == 3 and offset is not None and offset.ndim == 2:
        offset = jnp.broadcast_to(offset, y.shape[:1] + offset.shape)
    y = y - emitted(params, offset, v, y.shape)
    return params._replace(B=None, D=None), y, offset


def needs_inputs(params, inputs) -> bool:
    """Whether `params` has an input gain (`B` or `D`), checked against `inputs`: given exactly
    when it has one.

    Raises:
        ValueError: `inputs` given for a model without gains, or missing for one with them.
    """
    gains = params.B is not None or params.D is not None
    if not gains and inputs is not None:
        raise ValueError(
            "`inputs` were given but the parameters have no input gain: set `B` (drift) "
            "and/or `D` (observations)."
        )
    if gains and inputs is None:
        raise ValueError(
            "the parameters have input gains (`B`/`D`): give the known `inputs` (T, m)."
        )
    return gains


def response(params: LGSSMParams, v, batched: bool = False):
    """The deterministic response $s$ `(*B, T, d)` of the state to the inputs `v` `(*B, T, m)`:
    $s_1 = 0$, $s_{k+1} = A_k s_k + B_k v_k$; None without `B`. `batched`: `A` and `B`
    carry a leading axis of sequences (one grid each)."""
    if params.B is None:
        return None
    if batched or v.ndim == 3:
        axes = 0 if batched else None
        return jax.vmap(respond, in_axes=(axes, axes, 0 if v.ndim == 3 else None))(
            params.A, params.B, v
        )
    return respond(params.A, params.B, v)


def respond(A, B, v, s1=None):
    """`response` of one sequence: `A` `(d, d)` or `(T-1, d, d)`, `B` `(d, m)` or `(T-1, d, m)`,
    from `s1` (zero by default: the first state's law holds the rest)."""
    drive = jnp.einsum("dm,tm->td" if B.ndim == 2 else "tdm,tm->td", B, v[:-1])
    s1 = jnp.zeros(drive.shape[-1:], drive.dtype) if s1 is None else s1
    if A.ndim == 2:
        step = lambda s, c: (A @ s + c,) * 2  # noqa: E731
        _, rest = jax.lax.scan(step, s1, drive)
    else:
        step = lambda s, x: (x[0] @ s + x[1],) * 2  # noqa: E731
        _, rest = jax.lax.scan(step, s1, (A, drive))
    return jnp.concatenate([s1[None], rest])


def emitted(params, s, v, shape):
    """What the inputs add to the observations, $H_k s_k + D_k v_k$, broadcast to `shape`
    (that of `y`): `s` the state's response (or None) and `v` the inputs."""
    total = jnp.zeros(shape, v.dtype)
    if s is not None:
        rule = "pd,...td->...tp" if params.H.ndim == 2 else "tpd,...td->...tp"
        total = total + jnp.broadcast_to(jnp.einsum(rule, params.H, s), shape)
    if params.D is not None:
        rule = "pm,...tm->...tp" if params.D.ndim == 2 else "tpm,...tm->...tp"
        total = total + jnp.broadcast_to(jnp.einsum(rule, params.D, v), shape)
    return total
