r"""The EM loop, from a start given as parameters: the data resolved once, one path chosen, its
iteration (`sdessm.iteration`) run until it stops gaining, the SDE recovered, then the Newton
finish and certificate (`sdessm.information`).

- Uniform steps: the closed-form M-step of the derivation in the discrete model, then
  $[[F, Q], [0, -F^\top]] = \log([[A, \Sigma A^{-\top}], [0, A^{-\top}]]) / \Delta t$.
- Irregular steps, or a fixed diffusion: the transition part of the expected complete-data
  log-likelihood, read from statistics grouped by distinct step, is maximised numerically over
  $F$ and $L$ (L-BFGS, warm-started, a step is kept only if it does not lower the objective);
  initial-state and emission parameters keep their closed form.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from . import checkpoint as ckpt
from ._checks import (
    check_count,
    check_nonnegative,
    check_something_observed,
    float64,
    progress_bar,
)
from .discretize import (
    continuous_discrete,
    diffusion_from_sigma,
    group_steps,
    psd_factor,
    sde_from_discrete,
)
from .errors import NoRealLogarithmError, NotPSDError, NyquistWarning
from .identify import check_identified
from .information import FINISHES
from .information import finish as finish_fit
from .iteration import (
    continuous_iteration,
    covariances_valid,
    discrete_iteration,
    per_step_emissions,
    sde_parametrisation,
    squarem,
    structured_iteration,
)
from .kalman import prepare
from .mstep import R_STRUCTURES
from .params import LGSSMParams, SDEParams
from .results import EMResult

SDE_FIELDS = ("F", "L", "Q", "H", "u", "R", "mu1", "P1")
LGSSM_FIELDS = LGSSMParams._fields

#: Relative log-likelihood decrease tolerated as round-off.
DECREASE_RTOL = 1e-9
#: A recovered eigenvalue of F with |Im lambda| above this fraction of pi / dt is reported.
NYQUIST_FRACTION = 0.9
#: With `polish`, EM hands over to the Newton finish once an iteration gains less than this
#: (log-likelihood units): EM's linear convergence is slowest exactly there.
HANDOVER = 1e-3
#: With `polish`, EM also hands over when it crawls: each of the last CRAWL_WINDOW gains more
#: than CRAWL_RATIO times the previous one (then over 4x the last gain remains to be gained).
CRAWL_WINDOW, CRAWL_RATIO = 5, 0.8


def _free_fields(init, fixed, B):
    allowed = SDE_FIELDS if isinstance(init, SDEParams) else LGSSM_FIELDS
    fixed = ("P1",) if fixed is None and B == 1 else (() if fixed is None else fixed)
    if isinstance(fixed, str):
        fixed = (fixed,)
    unknown = sorted(set(fixed) - set(allowed))
    if unknown:
        raise ValueError(f"`fixed` names unknown field(s) {unknown}; choose from {list(allowed)}.")
    fixed = frozenset("L" if f == "Q" else f for f in fixed)
    return fixed


def mask_flags(y) -> tuple[bool, bool]:
    """(no NaN in `y` (B, T, p), every sequence has the NaN pattern of the first): static flags
    of the E-step, which shares one covariance recursion among sequences with one pattern."""
    missing = np.isnan(np.asarray(y))
    return not bool(missing.any()), bool((missing == missing[:1]).all())


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


def _observed_transitions(y) -> int:
    """Transitions within the observed span of each sequence of `y` (B, T, p), summed."""
    observed = np.any(~np.isnan(np.asarray(y)), axis=-1)
    last = np.where(observed.any(axis=1), y.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1), 0)
    return int(np.sum(last))


def _group_steps(y, times, dt):
    """Representative steps (G,) and the group of each transition ((T-1,) or (B, T-1))."""
    T = y.shape[-2]
    if dt is not None:
        return np.array([float(dt)]), np.zeros(T - 1, dtype=np.int32)
    return group_steps(np.diff(np.asarray(times, dtype=float), axis=-1))


def _crawling(objectives) -> bool:
    """EM converging linearly and slowly: each of the last `CRAWL_WINDOW` gains is more than
    `CRAWL_RATIO` times the one before, so what is left is many times the last gain."""
    gains = np.diff(np.asarray(objectives[-CRAWL_WINDOW - 1 :], dtype=float))
    if len(gains) < CRAWL_WINDOW or np.any(gains <= 0):
        return False
    return bool(np.all(gains[1:] > CRAWL_RATIO * gains[:-1]))


class _Problem(NamedTuple):
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
    complete: bool  # no NaN in y
    same_mask: bool  # every sequence has the NaN pattern of the first


class _Strategy(NamedTuple):
    """One path of EM, chosen once: its name, its state, one iteration
    (`step(state) -> (next state, log-likelihood of state, log-prior of state)`) and the way
    from its final state to the fitted parameters (`build(state) -> SDEParams`, None when the
    state is the discrete model itself)."""

    path: str
    state: object
    step: Callable
    build: Callable | None
    log_prior: Callable | None  # the log-prior of a MAP fit, as a function of the state
    numerical: bool = False  # a numerical M-step over the state as a whole (theta)
    structured: bool = False  # the state is the theta of a user's `structure`


def _check_arguments(init, structure, log_prior, R_structure, emissions, psd, finish, fixed):
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
        _free_fields(init, fixed, 1)  # unknown names
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
    if (structure is not None or log_prior is not None) and (
        R_structure != "full" or emissions != "shared"
    ):
        raise ValueError(
            "`R_structure` and `emissions` set the closed-form M-step; with `structure` or "
            "`log_prior`, build them into the parameters instead."
        )
    return sde0, fixed


def _resolve(sde0, y, times, dt, fixed, structured: bool, numerical: bool, per_step: bool,
             devices) -> _Problem:  # fmt: skip
    """The data on their grid (`_Problem`), with the checks that need them."""
    lg0, y_arr, _ = prepare(sde0, y, times, dt)
    yb = y_arr if y_arr.ndim == 3 else y_arr[None]
    B, T, _ = yb.shape
    if T < 2:
        raise ValueError("`y` must hold at least 2 time steps for EM.")
    fixed = frozenset() if structured else _free_fields(sde0, fixed, B)
    if not {"H", "u", "R"} <= fixed:
        check_something_observed(yb, "EM would estimate its emission parameters from nothing")
    transitions_free = not structured and not ({"F", "L"} <= fixed or {"A", "Sigma"} <= fixed)
    if transitions_free and _observed_transitions(yb) == 0:
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
    per_step_fields = [k for k, n in (("H", 2), ("u", 1), ("R", 2)) if np.ndim(getattr(lg0, k)) > n]
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
        sde0 = type(sde0)(*(jnp.asarray(x, dtype=float) for x in sde0))
        reps, groups = _group_steps(yb, times, dt)
    elif lg0.time_varying()["A"] and not {"A", "Sigma"} <= fixed:
        raise ValueError(
            "an `LGSSMParams` with per-step `A`/`Sigma` can only be fitted with both fixed; "
            "for irregular times fit an `SDEParams` with `times`."
        )
    complete, same_mask = mask_flags(yb)
    y_host = yb  # a sharded array may not be addressable here in full
    if devices is not None:
        yb = shard_sequences(yb, devices)
    return _Problem(
        sde0, lg0, yb, y_host, y_given, y_arr.ndim == 3, fixed, reps, groups, offset,
        complete, same_mask,
    )  # fmt: skip


def _strategy(problem: _Problem, init, structure, log_prior, R_structure, per_step: bool,
              mstep_iters: int, accelerate: bool, polish: bool) -> _Strategy:  # fmt: skip
    """The path of EM for this problem: structured or MAP (numerical M-step over theta), a
    numerical transition M-step (irregular steps, or a fixed diffusion), or the closed form.

    With `accelerate`, SQUAREM runs on the numerical paths, and on the others when EM itself
    must reach the maximum (no `polish`): there the quasi-Newton finish does the work of the
    crawl better from plain EM's earlier handover (4-D OU with 20% missing, T = 2000: 17.5 s
    to the certified maximum from plain EM, 22.3 s from SQUAREM's later one)."""
    p = problem
    y, fixed, T = p.y, p.fixed, p.y.shape[1]
    is_sde = p.reps is not None
    reps, groups = (jnp.asarray(p.reps), jnp.asarray(p.groups)) if is_sde else (None, None)
    if structure is not None or log_prior is not None:
        if structure is None:  # MAP over the fields of an SDEParams
            state, build = sde_parametrisation(p.sde0, fixed)
            prior = log_prior
            log_prior = lambda th: prior(build(th))  # noqa: E731
            path = "numerical (MAP)"
        else:
            state = jax.tree.map(lambda a: jnp.asarray(a, dtype=float), init)
            build = structure
            path = "numerical (structured" + (", MAP)" if log_prior is not None else ")")
        args = (y, reps, groups, build, log_prior, mstep_iters, p.complete, p.same_mask)
        step = lambda s: structured_iteration(s, *args)  # noqa: E731
        step = squarem(step) if accelerate else step
        return _Strategy(path, state, step, build, log_prior, True, structure is not None)
    if is_sde and (len(p.reps) > 1 or "L" in fixed):
        state = per_step_emissions(p.sde0, T) if per_step else p.sde0
        config = (fixed, R_structure, per_step, mstep_iters, p.complete, p.same_mask)
        step = lambda s: continuous_iteration(s, y, reps, groups, config)  # noqa: E731
        valid = functools.partial(covariances_valid, names=("R", "P1"))
        step = squarem(step, valid=valid) if accelerate and not polish else step
        return _Strategy("numerical transitions", state, step, lambda s: s, None)
    discrete_fixed = set(fixed) | ({"A"} if is_sde and "F" in fixed else set())
    state = per_step_emissions(p.lg0, T) if per_step else p.lg0
    update = not {"A", "Sigma"} <= discrete_fixed
    config = (frozenset(discrete_fixed), R_structure, per_step, update, p.complete, p.same_mask)
    step = lambda s: discrete_iteration(s, y, config)  # noqa: E731
    step = squarem(step, valid=covariances_valid) if accelerate and not polish else step
    return _Strategy("closed form", state, step, None, None)


def _iterate(strategy: _Strategy, num_iters: int, tol: float, polish: bool, progress: bool,
             store) -> tuple:  # fmt: skip
    """The EM loop: `(state, log-likelihoods, objectives, converged, report)`.

    It stops when an iteration gains less than `tol` (with `polish`: less than `HANDOVER`, or
    when EM crawls), at `num_iters`, or when the objective falls (round-off aside), keeping the
    previous iterate. `store` is a `_Checkpoint` or None."""
    state, previous = strategy.state, strategy.state
    lls, objectives, start, stopped = [], [], 0, None
    report: dict = {"path": strategy.path}
    if store is not None:
        state, previous, lls, objectives, start, stopped = store.resume(state, num_iters)
    converged = stopped is not None and bool(stopped["converged"])
    if stopped is not None:  # a finished run, as it was saved
        report["stopped"] = stopped["reason"]
    bar = progress_bar()(
        total=num_iters, initial=start, desc="EM", disable=not progress or stopped is not None,
        leave=False,
    )  # fmt: skip
    with bar:
        for it in range(start, num_iters + 1 if stopped is None else start):
            if store is not None:
                store.mark()
            new_state, ll, lp = strategy.step(state)
            ll, objective = float(ll), float(ll) + float(lp)
            if not np.isfinite(objective):
                raise FloatingPointError(
                    f"EM iteration {it}: the objective is {objective}; the parameters have left "
                    "the valid region (a covariance collapsed?). Try fixing P1 or R, or more data."
                )
            if objectives and objective < objectives[-1] - DECREASE_RTOL * max(
                1.0, abs(objectives[-1])
            ):
                report["stopped"] = (
                    f"the objective decreased by {objectives[-1] - objective:.3g} at iteration "
                    f"{it}; returned the previous iterate"
                )
                warnings.warn(f"EM stopped: {report['stopped']}.", RuntimeWarning, stacklevel=4)
                state = previous
                if store is not None:
                    store.stop(state, state, lls, objectives, it, report["stopped"], False)
                break
            lls.append(ll)
            objectives.append(objective)
            change = abs(objectives[-1] - objectives[-2]) if len(objectives) > 1 else np.inf
            if change <= (max(tol, HANDOVER) if polish else tol) or (
                polish and _crawling(objectives)
            ):
                converged = True
                if store is not None:
                    store.stop(state, previous, lls, objectives, it + 1, "converged", True)
                break
            if it == num_iters:
                if store is not None:  # resumable with a larger num_iters
                    store.stop(state, previous, lls, objectives, it, "reached num_iters", False)
                break
            previous, state = state, new_state
            if store is not None:
                store.every(state, previous, lls, objectives, it + 1)
            bar.update(1)
            bar.set_postfix(loglik=f"{ll:.6g}", refresh=False)
    report.setdefault("stopped", "converged" if converged else "reached num_iters")
    if report["stopped"] == "converged":  # EM's own rule: an iteration gained less than a bound
        last = objectives[-1] - objectives[-2] if len(objectives) > 1 else 0.0
        if polish and last > max(tol, HANDOVER):
            report["stopped"] = "EM crawled: its gains shrank by less than 20% per iteration"
        else:
            report["stopped"] = "the gain per iteration fell below " + (
                f"{max(tol, HANDOVER):g}" if polish else f"tol = {tol:g}"
            )
    return state, lls, objectives, converged, report


class _Checkpoint:
    """A run kept in the file `path`: resumed if it holds this run (`key`), written every
    `every_n` iterations and when the loop stops. `bound` is SQUAREM's step bound (a one-item
    list the accelerated step updates), None for plain EM."""

    def __init__(self, path, key, every_n: int, bound: list | None = None):
        self.path, self.key, self.every_n, self.bound = path, key, every_n, bound
        self.before = None  # the bound before the latest step

    def resume(self, state, num_iters: int):
        saved = ckpt.load(self.path, state, self.key)
        if saved is None:
            return state, state, [], [], 0, None
        state, previous = saved["state"], saved["previous"]
        lls, objectives = saved["lls"], saved["objectives"]
        start, stopped = saved["next_iter"], saved["stopped"]
        if self.bound is not None and saved["step_bound"] is not None:
            self.bound[0] = saved["step_bound"]
        if stopped is not None and stopped["reason"] == "reached num_iters":
            if num_iters > start:  # continue: iteration `start` is computed again
                lls, objectives, stopped = lls[:-1], objectives[:-1], None
        return state, previous, lls, objectives, start, stopped

    def mark(self):
        """Called before each step: the bound to save if that step is computed again."""
        self.before = None if self.bound is None else self.bound[0]

    def every(self, state, previous, lls, objectives, next_iter: int):
        if next_iter % self.every_n == 0:
            bound = None if self.bound is None else self.bound[0]
            ckpt.save(
                self.path, state, previous, lls, objectives, next_iter, key=self.key,
                step_bound=bound,
            )  # fmt: skip

    def stop(self, state, previous, lls, objectives, next_iter, reason: str, converged: bool):
        stopped = {"reason": reason, "converged": converged}
        # at num_iters the last step is computed again by a continued run: the bound before it
        bound = self.before if reason == "reached num_iters" else None
        ckpt.save(
            self.path, state, previous, lls, objectives, next_iter, key=self.key, stopped=stopped,
            step_bound=bound,
        )  # fmt: skip


def _assemble(problem: _Problem, strategy: _Strategy, state, lls, converged, report, R_structure,
              psd: str) -> EMResult:  # fmt: skip
    """The `EMResult` of the final state: the SDE (recovered by the matrix logarithm on the
    closed-form path), its discrete model on the grid, the known offset put back."""
    p = problem
    is_sde = p.reps is not None
    reps, groups = (jnp.asarray(p.reps), jnp.asarray(p.groups)) if is_sde else (None, None)
    sde = None
    if strategy.build is not None:
        sde = strategy.build(state)
        _, _, discrete = continuous_discrete(sde, reps, groups)
        if p.groups.ndim == 1 and len(p.reps) == 1:
            discrete = discrete._replace(A=discrete.A[0], Sigma=discrete.Sigma[0])
        params = state if strategy.structured else sde
        if len(p.reps) == 1:
            _report_drift(np.asarray(sde.F), float(p.reps[0]), report)
        else:  # irregular sampling: no single Nyquist limit
            report["eigenvalues_F"] = np.linalg.eigvals(np.asarray(sde.F))
    else:
        discrete = params = state
    if p.offset is not None:
        discrete, params = discrete._replace(u=p.offset), params._replace(u=p.offset)
        sde = sde._replace(u=p.offset) if sde is not None else None
    context = dict(
        y=p.y_given if p.batched else p.y_given[0],
        reps=reps,
        groups=groups,
        fixed=p.fixed,
        R_structure=R_structure,
        structure=strategy.build if strategy.numerical else None,
        log_prior=strategy.log_prior,
    )
    if strategy.numerical and not strategy.structured:  # MAP on SDEParams: theta's coordinates
        context["theta"] = state
    result = EMResult(
        params, discrete, np.asarray(lls), converged, len(lls) - 1, report, sde, context
    )
    if is_sde and strategy.build is None:
        sde = _recover(result, p.sde0, float(p.reps[0]), p.fixed, psd, report)
        result = dataclasses.replace(result, params=sde, sde=sde)
    return result


@float64
def run_em(
    init,
    y,
    times=None,
    *,
    dt: float | None = None,
    num_iters: int = 500,
    tol: float = 1e-6,
    finish: str = "polish",
    fixed=None,
    R_structure: str = "full",
    emissions: str = "shared",
    structure=None,
    log_prior=None,
    psd: str = "report",
    mstep_iters: int = 30,
    accelerate: bool = True,
    progress: bool = True,
    checkpoint=None,
    checkpoint_every: int = 10,
    devices=None,
) -> EMResult:
    """The EM loop behind `sdessm.fit_em` for a start given as parameters (`SDEParams`,
    `LGSSMParams`, or theta with `structure`): the arguments are `fit_em`'s
    (`sdessm.fit.fit_em`), less those of a NumPyro model."""
    # argument checks: all of them before the data are read or anything is compiled
    sde0, fixed_given = _check_arguments(
        init, structure, log_prior, R_structure, emissions, psd, finish, fixed
    )
    num_iters, mstep_iters = (
        check_count("num_iters", num_iters),
        check_count("mstep_iters", mstep_iters),
    )
    tol = check_nonnegative("tol", tol)
    if int(checkpoint_every) < 1:
        raise ValueError(f"`checkpoint_every` must be >= 1; got {checkpoint_every}.")
    numerical, per_step = structure is not None or log_prior is not None, emissions == "per_step"
    structured = structure is not None
    problem = _resolve(sde0, y, times, dt, fixed_given, structured, numerical, per_step, devices)
    if fixed_given is None and finish != "none" and not numerical and not per_step:
        if problem.offset is None and not any(problem.lg0.time_varying().values()):
            T = problem.y.shape[1]
            steps = np.zeros(T - 1)
            if problem.reps is not None:
                steps = problem.reps[np.reshape(problem.groups, (-1, T - 1))[0]]
            check_identified(problem.sde0, problem.fixed, R_structure, steps)
    strategy = _strategy(
        problem, init, structure, log_prior, R_structure, per_step, mstep_iters, accelerate,
        finish == "polish",
    )  # fmt: skip
    store = None
    if checkpoint is not None:
        key = ckpt.fingerprint(
            strategy.state,
            path=strategy.path,
            y=problem.y_host,
            times=None if times is None else np.asarray(times, dtype=float),
            dt=None if dt is None else float(dt),
            fixed=tuple(sorted(problem.fixed)),
            R_structure=R_structure,
            emissions=emissions,
            accelerate=bool(accelerate),
            mstep_iters=mstep_iters,
        )
        store = _Checkpoint(
            checkpoint, key, checkpoint_every, getattr(strategy.step, "bound", None)
        )
    state, lls, objectives, converged, report = _iterate(
        strategy, num_iters, tol, finish == "polish", progress, store
    )
    if log_prior is not None:
        report["log_posteriors"] = np.asarray(objectives)
    result = _assemble(problem, strategy, state, lls, converged, report, R_structure, psd)
    if devices is not None or per_step or problem.offset is not None:
        report["convergence"] = "not certified: the exact finish does not cover " + (
            "sharded sequences" if devices is not None else "per-step emissions"
        )
        return dataclasses.replace(result, converged=False)
    result = finish_fit(result, finish, tol, progress)
    one_step = problem.reps is not None and len(problem.reps) == 1
    if one_step and not strategy.numerical and result.sde is not None:
        _report_drift(np.asarray(result.sde.F), float(problem.reps[0]), result.report, warn=False)
    return result


def _report_drift(F, dt, report, warn: bool = True):
    eig = np.linalg.eigvals(F)
    report["eigenvalues_F"] = eig
    report["nyquist_margin"] = float(np.pi / dt - np.abs(eig.imag).max())
    if warn and np.abs(eig.imag).max() > NYQUIST_FRACTION * np.pi / dt:
        warnings.warn(
            f"an eigenvalue of F has |Im lambda| = {np.abs(eig.imag).max():.4g}, near the Nyquist "
            f"limit pi/dt = {np.pi / dt:.4g}: frequencies are identified only modulo 2 pi / dt, "
            "so the recovered F may be an alias.",
            NyquistWarning,
            stacklevel=4,
        )


def _recover(result: EMResult, init: SDEParams, dt: float, fixed, psd: str, report: dict):
    """SDEParams from the discrete fit (uniform step `dt`)."""
    lg = result.discrete
    if "F" in fixed:  # A = exp(F dt) is known: Q from Sigma alone, no logarithm needed
        F = np.asarray(init.F, dtype=float)
        Q = diffusion_from_sigma(F, np.asarray(lg.A, dtype=float), np.asarray(lg.Sigma))
    else:
        try:
            F, Q = sde_from_discrete(np.asarray(lg.A), np.asarray(lg.Sigma), dt)
        except NoRealLogarithmError as err:
            raise NoRealLogarithmError(str(err), result) from None
    _report_drift(F, dt, report)
    w = np.linalg.eigvalsh(Q)
    report["Q_min_eigenvalue"] = float(w.min())
    report["psd_replaced"] = False
    if w.min() < -1e-10 * max(1.0, np.abs(w).max()):
        if psd == "report":
            raise NotPSDError(
                f"the diffusion Q recovered from the fit is not PSD: its most negative "
                f"eigenvalue is {w.min():.4g}. The fitted discrete model is in `err.result`; "
                "pass psd='nearest' to replace Q by the nearest PSD matrix.",
                result,
                Q,
            )
        w_all, V = np.linalg.eigh(Q)
        Q = (V * np.clip(w_all, 0.0, None)) @ V.T
        report["psd_replaced"] = True
    dtype = jnp.result_type(float)
    return SDEParams(
        jnp.asarray(F, dtype),
        jnp.asarray(psd_factor(Q), dtype),
        lg.H,
        lg.u,
        lg.R,
        lg.mu1,
        lg.P1,
    )
