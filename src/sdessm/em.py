r"""The EM loop, from a start given as parameters: the data resolved once, one path chosen, its
iteration (`sdessm.iteration`) run until it stops gaining, the SDE recovered, then the Newton
finish and certificate (`sdessm.newton`).

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
    float64,
    progress_bar,
)
from .discretize import (
    diffusion_from_sigma,
    psd_factor,
    sde_from_discrete,
)
from .em_problem import FitProblem, check_arguments, resolve_fit
from .errors import NoRealLogarithmError, NotPSDError, NyquistWarning
from .identify import check_identified
from .iteration import (
    continuous_iteration,
    covariances_valid,
    discrete_iteration,
    per_step_emissions,
    sde_parametrisation,
    squarem,
    structured_iteration,
)
from .newton import finish as finish_fit
from .params import SDEParams, discrete_on_groups, transitions
from .results import EMResult

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


def _crawling(objectives) -> bool:
    """EM converging linearly and slowly: each of the last `CRAWL_WINDOW` gains is more than
    `CRAWL_RATIO` times the one before, so what is left is many times the last gain."""
    gains = np.diff(np.asarray(objectives[-CRAWL_WINDOW - 1 :], dtype=float))
    if len(gains) < CRAWL_WINDOW or np.any(gains <= 0):
        return False
    return bool(np.all(gains[1:] > CRAWL_RATIO * gains[:-1]))


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


def _strategy(problem: FitProblem, init, structure, log_prior, R_structure, per_step: bool,
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
        args = (y, reps, groups, build, log_prior, mstep_iters, p.complete, p.same_mask, p.inputs)
        step = lambda s: structured_iteration(s, *args)  # noqa: E731
        step = squarem(step) if accelerate else step
        return _Strategy(path, state, step, build, log_prior, True, structure is not None)
    # B held while F moves: the discrete B_k moves with F, so no closed form holds it
    held_gain = is_sde and p.sde0.B is not None and "B" in fixed and "F" not in fixed
    if is_sde and (len(p.reps) > 1 or "L" in fixed or held_gain):
        state = per_step_emissions(p.sde0, T) if per_step else p.sde0
        config = (fixed, R_structure, per_step, mstep_iters, p.complete, p.same_mask)
        step = lambda s: continuous_iteration(s, y, reps, groups, config, p.inputs)  # noqa: E731
        valid = functools.partial(covariances_valid, names=("R", "P1"))
        step = squarem(step, valid=valid) if accelerate and not polish else step
        return _Strategy("numerical transitions", state, step, lambda s: s, None)
    discrete_fixed = set(fixed) | ({"A"} if is_sde and "F" in fixed else set())
    state = per_step_emissions(p.lg0, T) if per_step else p.lg0
    held = discrete_fixed | ({"B"} if p.lg0.B is None else set())
    update = not {"A", "Sigma", "B"} <= held
    config = (frozenset(discrete_fixed), R_structure, per_step, update, p.complete, p.same_mask)
    step = lambda s: discrete_iteration(s, y, config, p.inputs)  # noqa: E731
    step = squarem(step, valid=covariances_valid) if accelerate and not polish else step
    return _Strategy("closed form", state, step, None, None)


def _iterate(strategy: _Strategy, num_iters: int, tol: float, polish: bool, progress: bool,
             store) -> tuple:  # fmt: skip
    """The EM loop: `(state, log-likelihoods, objectives, converged, report)`.

    It stops when an iteration gains less than `tol` (with `polish`: less than `HANDOVER`, or
    when EM crawls), at `num_iters`, or when the objective falls (round-off aside), keeping the
    previous iterate. `store` is a `checkpoint.RunFile` or None."""
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


def _assemble(problem: FitProblem, strategy: _Strategy, state, lls, converged, report, R_structure,
              psd: str) -> EMResult:  # fmt: skip
    """The `EMResult` of the final state: the SDE (recovered by the matrix logarithm on the
    closed-form path), its discrete model on the grid, the known offset put back."""
    p = problem
    is_sde = p.reps is not None
    reps, groups = (jnp.asarray(p.reps), jnp.asarray(p.groups)) if is_sde else (None, None)
    sde = None
    if strategy.build is not None:
        sde = strategy.build(state)
        discrete = discrete_on_groups(sde, reps, groups)
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
        inputs=p.inputs,
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
    inputs=None,
) -> EMResult:
    """The EM loop behind `sdessm.fit_em` for a start given as parameters (`SDEParams`,
    `LGSSMParams`, or theta with `structure`): the arguments are `fit_em`'s
    (`sdessm.fit.fit_em`), less those of a NumPyro model."""
    # argument checks: all of them before the data are read or anything is compiled
    sde0, fixed_given = check_arguments(
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
    problem = resolve_fit(
        sde0, y, times, dt, fixed_given, structured, numerical, per_step, devices, inputs
    )
    if fixed_given is None and finish != "none" and not numerical and not per_step:
        if problem.offset is None and not any(problem.lg0.time_varying().values()):
            T = problem.y.shape[1]
            steps = np.zeros(T - 1)
            if problem.reps is not None:
                steps = problem.reps[np.reshape(problem.groups, (-1, T - 1))[0]]
            # the law without inputs: what the gains add depends on the inputs given, and
            # the certificate at the end judges them with the inputs themselves
            plain = problem.sde0._replace(B=None, D=None)
            check_identified(plain, problem.fixed, R_structure, steps)
    strategy = _strategy(
        problem, init, structure, log_prior, R_structure, per_step, mstep_iters, accelerate,
        finish == "polish",
    )  # fmt: skip
    store = None
    if checkpoint is not None:
        settings = dict(
            times=None if times is None else np.asarray(times, dtype=float),
            dt=None if dt is None else float(dt),
            R_structure=R_structure,
            emissions=emissions,
            accelerate=bool(accelerate),
            mstep_iters=mstep_iters,
            inputs=None if problem.inputs is None else np.asarray(problem.inputs),
        )
        store = _run_file(checkpoint, checkpoint_every, problem, strategy, settings)
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


def _run_file(path, every: int, problem: FitProblem, strategy: _Strategy, settings: dict):
    """The checkpoint file of this run: its key fingerprints the start, the path of EM, the
    data, the fixed fields and every setting that changes the iterates."""
    key = ckpt.fingerprint(
        strategy.state,
        path=strategy.path,
        y=problem.y_host,
        fixed=tuple(sorted(problem.fixed)),
        **settings,
    )
    return ckpt.RunFile(path, key, every, getattr(strategy.step, "bound", None))


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
    """SDEParams from the discrete fit (uniform step `dt`); the drift's input gain from
    `B_k = Phi B`, `Phi = int_0^dt e^{F s} ds`: the discrete input matrix of the recovered F
    for `B = I`, from the same augmented exponential that gives `B_k` (`params.transitions`)."""
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
    sde = SDEParams(
        jnp.asarray(F, dtype),
        jnp.asarray(psd_factor(Q), dtype),
        lg.H,
        lg.u,
        lg.R,
        lg.mu1,
        lg.P1,
        None,
        lg.D,
    )
    if lg.B is None:
        return sde
    if "B" in fixed:
        return sde._replace(B=init.B)
    unit = sde._replace(B=jnp.eye(sde.state_dim, dtype=dtype), D=None)
    Phi = transitions(unit, jnp.asarray(dt, dtype), grouped=False)[2]
    return sde._replace(B=jnp.asarray(np.linalg.solve(np.asarray(Phi), np.asarray(lg.B)), dtype))
