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

import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import as_float_array, check_observations, check_times, concrete
from .params import LGSSMParams, SDEParams, as_arrays, on_grid


class Problem(NamedTuple):
    """A resolved problem: what `resolve` returns."""

    params: LGSSMParams  # the discrete model on the grid
    y: Float[Array, "*B T p"]  # the observations, converted once
    params_batched: bool  # one grid per sequence: `A`, `Sigma` carry a leading B axis
    complete: bool  # `y` is concrete and holds no NaN
    same_mask: bool  # every sequence has the NaN pattern of the first (True when complete)


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
) -> Problem:
    """Validate the public arguments and resolve them into a `Problem`.

    Args:
        params: an `SDEParams` (with `times` or `dt`) or an `LGSSMParams` (without).
        y: observations `(T, p)` or `(B, T, p)`; NaN marks a missing value.
        times: observation times `(T,)` shared by the sequences, or `(B, T)`.
        dt: a uniform step instead of `times`.

    Raises:
        ValueError: a wrong shape or value, `times` and `dt` both or neither given for an
            `SDEParams`, or either given for an `LGSSMParams`.
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
    return Problem(params, y, batched, complete, same_mask)
