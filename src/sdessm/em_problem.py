r"""The problem of an EM fit, resolved once from the user's arguments: the checks that need no
data, then the data on their grid (`sdessm.problem.resolve`) with what EM adds to it: the fixed
fields, the groups of equal steps, a known per-step offset taken out of `y`, the mask flags,
and the sequences sharded over devices when asked.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_inputs, check_something_observed
from .discretize import group_steps
from .mstep import R_STRUCTURES
from .newton import FINISHES
from .params import LGSSMParams, SDEParams, as_arrays, on_grid
from .problem import needs_inputs, resolve

SDE_FIELDS = ("F", "L", "Q", "H", "u", "R", "mu1", "P1", "B", "D")
LGSSM_FIELDS = LGSSMParams._fields


def free_fields(init, fixed, B):
    allowed = SDE_FIELDS if isinstance(init, SDEParams) else LGSSM_FIELDS
    fixed = ("P1",) if fixed is None and B == 1 else (() if fixed is None else fixed)
    if isinstance(fixed, str):
        fixed = (fixed,)
    unknown = sorted(set(fixed) - set(allowed))
    if unknown:
        raise ValueError(f"`fixed` names unknown field(s) {unknown}; choose from {list(allowed)}.")
    fixed = frozenset("L" if f == "Q" else f for f in fixed)
    return fixed


def shard_sequences(y, devices="all"):
    """`y` (B, T, p) as one array whose sequences are split evenly over `devices`.

    `devices` is `"all"` (`jax.devices()`: with `jax.distributed` initialised, the devices of
    every process) or a sequence of devices. Every process passes the same full `y`; each device
    receives its block of sequences (`jax.make_array_from_callback`).

    Raises:
        ValueError: no device given, or B not a multiple of their number.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices() if isinstance(devices, str) and devices == "all" else devices
    if isinstance(devices, str) or not len(devices):
        raise ValueError(
            f"`devices` must be 'all' or a non-empty list of devices; got {devices!r}."
        )
    y = np.asarray(y)
    if y.ndim != 3 or y.shape[0] % len(devices):
        raise ValueError(
            f"`devices`: the {y.shape[0] if y.ndim == 3 else 1} sequence(s) of `y` cannot be "
            f"split evenly over {len(devices)} devices; use a number of sequences that is a "
            "multiple of the number of devices, or fewer devices."
        )
    mesh = Mesh(np.asarray(devices), ("sequences",))
    sharding = NamedSharding(mesh, PartitionSpec("sequences"))
    return jax.make_array_from_callback(y.shape, sharding, lambda index: y[index])


def observed_transitions(y) -> int:
    """Transitions within the observed span of each sequence of `y` (B, T, p), summed."""
    observed = np.any(~np.isnan(np.asarray(y)), axis=-1)
    last = np.where(observed.any(axis=1), y.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1), 0)
    return int(np.sum(last))


def step_groups(y, times, dt):
    """Representative steps (G,) and the group of each transition ((T-1,) or (B, T-1))."""
    T = y.shape[-2]
    if dt is not None:
        return np.array([float(dt)]), np.zeros(T - 1, dtype=np.int32)
    return group_steps(np.diff(np.asarray(times, dtype=float), axis=-1))


class FitProblem(NamedTuple):
    """The data and time grid of a fit, resolved once from the user's arguments."""

    sde0: SDEParams | LGSSMParams  # the start (a known per-step offset taken out)
    lg0: LGSSMParams  # its discrete model on the grid
    y: jax.Array  # (B, T, p), less a known offset; sharded over `devices` if asked
    y_host: jax.Array  # the same, on the host (what a checkpoint fingerprints)
    y_given: jax.Array  # (B, T, p) as given
    batched: bool  # y was given as (B, T, p)
    fixed: frozenset  # the fields held at their start
    reps: np.ndarray | None  # representative steps (G,), None for an `LGSSMParams` fit
    groups: np.ndarray | None  # the group of each transition, (T-1,) or (B, T-1)
    offset: jax.Array | None  # a known per-step offset u_k, taken out of y
    inputs: jax.Array | None  # (B, T, m) known inputs of a model with gains `B`/`D`
    complete: bool  # no NaN in y
    same_mask: bool  # every sequence has the NaN pattern of the first


def check_arguments(init, structure, log_prior, R_structure, emissions, psd, finish, fixed):
    """Argument checks that need no data: the SDEParams (or LGSSMParams) the start stands for,
    and `fixed` as a tuple of names (None where not given)."""
    if structure is None and log_prior is None and not isinstance(init, SDEParams | LGSSMParams):
        raise TypeError(
            "`model` must be SDEParams, LGSSMParams, a NumPyro model function, or theta with "
            f"`structure`; got {type(init).__name__}."
        )
    if R_structure not in R_STRUCTURES:
        raise ValueError(f"`R_structure` must be one of {R_STRUCTURES}; got {R_structure!r}.")
    if emissions not in ("shared", "per_step"):
        raise ValueError(f"`emissions` must be 'shared' or 'per_step'; got {emissions!r}.")
    if psd not in ("report", "nearest"):
        raise ValueError(f"`psd` must be 'report' or 'nearest'; got {psd!r}.")
    if finish not in FINISHES:
        raise ValueError(f"`finish` must be one of {FINISHES}; got {finish!r}.")
    if fixed is not None and structure is None:
        names = (fixed,) if isinstance(fixed, str) else fixed
        try:
            names = tuple(names)
        except TypeError:
            names = None
        if names is None or not all(isinstance(f, str) for f in names):
            raise TypeError(
                "`fixed` must be a field name or a sequence of field names, e.g. ('H', 'u'); "
                f"got {fixed!r}."
            )
        fixed = names
        free_fields(init, fixed, 1)  # unknown names
    if structure is not None:
        if fixed is not None:
            raise ValueError("`fixed` does not apply with `structure`: keep constants inside it.")
        sde0 = structure(init)
        if not isinstance(sde0, SDEParams):
            raise TypeError(f"`structure(init)` must return SDEParams; got {type(sde0).__name__}.")
    elif log_prior is not None and not isinstance(init, SDEParams):
        raise TypeError("`log_prior` without `structure` needs an `SDEParams` init.")
    else:
        sde0 = init
    if getattr(sde0, "B", None) is not None or getattr(sde0, "D", None) is not None:
        if (structure is None and log_prior is not None) or emissions == "per_step":
            raise NotImplementedError(
                "EM does not fit input gains (`B`/`D`) for MAP over `SDEParams` or with "
                "emissions='per_step'; write the model as a `structure` (or a NumPyro model), "
                "or maximise `sdessm.log_likelihood(..., inputs=)`."
            )
    if (structure is not None or log_prior is not None) and (
        R_structure != "full" or emissions != "shared"
    ):
        raise ValueError(
            "`R_structure` and `emissions` set the closed-form M-step; with `structure` or "
            "`log_prior`, build them into the parameters instead."
        )
    return sde0, fixed


def check_gains_fittable(sde0, lg0) -> None:
    """Input gains EM can fit: those of an `SDEParams`, or shared (not per-step) discrete ones."""
    if isinstance(sde0, LGSSMParams) and (lg0.time_varying()["B"] or lg0.time_varying()["D"]):
        raise ValueError(
            "EM fits shared input gains only: an `LGSSMParams` with per-step `B` or `D` cannot "
            "be fitted; for irregular times fit an `SDEParams` with `times`."
        )


def resolve_fit(sde0, y, times, dt, fixed, structured: bool, numerical: bool, per_step: bool,
             devices, inputs=None) -> FitProblem:  # fmt: skip
    """The data on their grid (`_Problem`), with the checks that need them."""
    # EM keeps the gains in the model and the data as given: the grid and the data are
    # resolved without the gains, which are then checked and put on the grid themselves
    gains = needs_inputs(sde0, inputs)
    problem = resolve(sde0._replace(B=None, D=None) if gains else sde0, y, times, dt)
    lg0, y_arr, v = problem.params, problem.y, None
    if gains:
        T = y_arr.shape[-2]
        sde0 = as_arrays(sde0).validate(num_timesteps=T)
        v = check_inputs(inputs, T, sde0.input_dim, y_arr.shape[0] if y_arr.ndim == 3 else None)
        if isinstance(sde0, SDEParams):
            lg0 = on_grid(sde0, times, dt)
        else:
            lg0 = lg0._replace(B=sde0.B, D=sde0.D)
    yb = y_arr if y_arr.ndim == 3 else y_arr[None]
    B, T, _ = yb.shape
    if v is not None:
        v = jnp.broadcast_to(v, (B, T, v.shape[-1]))
    if T < 2:
        raise ValueError("`y` must hold at least 2 time steps for EM.")
    fixed = frozenset() if structured else free_fields(sde0, fixed, B)
    if v is not None:
        check_gains_fittable(sde0, lg0)
    if not {"H", "u", "R"} <= fixed:
        check_something_observed(yb, "EM would estimate its emission parameters from nothing")
    transitions_free = not structured and not ({"F", "L"} <= fixed or {"A", "Sigma"} <= fixed)
    if transitions_free and observed_transitions(yb) == 0:
        raise ValueError(
            "`y` holds no transition between observed time steps: every sequence is observed at "
            "one time at most (trailing all-NaN rows are padding). EM needs a sequence observed "
            "at two times at least, or the transition parameters in `fixed`."
        )
    if per_step:
        d = lg0.state_dim
        need = (0 if "H" in fixed else d) + (0 if "u" in fixed else 1) + (0 if "R" in fixed else 1)
        if B < need:
            raise ValueError(
                f"`emissions='per_step'` estimates H_k, u_k, R_k at each step from the B = {B} "
                f"sequences; with these free it needs B >= {need}. Use more sequences, fix some "
                "emission fields, or emissions='shared'."
            )
    y_given, offset = yb, None
    per_step_fields = [k for k in ("H", "u", "R") if lg0.time_varying()[k]]
    if per_step_fields and not per_step and not numerical:
        if per_step_fields != ["u"] or "u" not in fixed:
            raise ValueError(
                f"per-step {per_step_fields} with emissions='shared' is supported only for a known "
                "per-step offset `u` held fixed (fixed=(..., 'u')); use emissions='per_step'."
            )
        offset = lg0.u  # a known offset u_k: fit y_k - u_k with u = 0
        yb = yb - offset[None]
        zero_u = jnp.zeros(offset.shape[-1], dtype=offset.dtype)
        lg0, sde0 = lg0._replace(u=zero_u), sde0._replace(u=zero_u)
    reps = groups = None
    if isinstance(sde0, SDEParams):
        sde0 = jax.tree.map(lambda x: jnp.asarray(x, dtype=float), sde0)
        reps, groups = step_groups(yb, times, dt)
    elif lg0.time_varying()["A"] and not {"A", "Sigma"} <= fixed:
        raise ValueError(
            "an `LGSSMParams` with per-step `A`/`Sigma` can only be fitted with both fixed; "
            "for irregular times fit an `SDEParams` with `times`."
        )
    complete, same_mask = problem.complete, problem.same_mask
    y_host = yb  # a sharded array may not be addressable here in full
    if devices is not None:
        yb = shard_sequences(yb, devices)
    return FitProblem(
        sde0, lg0, yb, y_host, y_given, y_arr.ndim == 3, fixed, reps, groups, offset, v,
        complete, same_mask,
    )  # fmt: skip
