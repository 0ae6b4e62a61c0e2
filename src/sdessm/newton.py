r"""The Newton finish of EM: quasi-Newton polish on the exact objective, the certificate of a
maximum (the observed information positive definite and the gain a Newton step predicts below
`tol`), and the verdict the report gives.

It works in the free coordinates of `sdessm.information` (the same as the standard errors), on
the compiled objective and Hessian kept there.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from ._checks import progress_bar
from .discretize import psd_factor
from .information import (
    MAX_CERTIFIED_COORDINATES,
    coordinate_scales,
    flat_coordinates,
    flat_direction,
    flat_floor,
    objective_loglik,
    objective_of,
    observed_information,
    programs,
)
from .params import SDEParams, discrete_on_groups

if TYPE_CHECKING:
    from .results import EMResult

#: What may follow EM in `fit_em` (see its `finish`).
FINISHES = ("polish", "certify", "none")
#: Most quasi-Newton iterations of the polish; then at most NEWTON_STEPS Newton steps, each
#: halved at most NEWTON_HALVINGS times, to meet the certificate's `tol`.
POLISH_ITERATIONS = 200
NEWTON_STEPS, NEWTON_HALVINGS = 8, 20


def _valid(v, rebuild, unravel) -> bool:
    """Whether the coordinates `v` of `coordinates` give valid parameters: the covariances
    among them (Q, R, P1, Sigma) positive semi-definite (no round-off allowed: the public
    filter factorises them). A structured model is valid by construction."""
    if unravel is not None:
        return True
    return all(np.linalg.eigvalsh(x).min() >= 0 for _, x in _covariances(v, rebuild))


def _covariances(v, rebuild) -> list[tuple[str, np.ndarray]]:
    """`(name, matrix)` of the covariances (Q, R, P1, Sigma) that the coordinates `v` give."""
    params, Q = rebuild(jnp.asarray(v))
    named = [("Q", Q)] + [(name, getattr(params, name, None)) for name in ("R", "P1", "Sigma")]
    return [(n, np.asarray(x, dtype=float)) for n, x in named if x is not None and np.ndim(x) == 2]


def _at(result: EMResult, v, rebuild, unravel):
    """The `EMResult` with its parameters at the coordinates `v` (same history and context), or
    None when `v` leaves the valid region (a covariance that is not PSD)."""
    ctx = result._context
    v = jnp.asarray(v)
    if not _valid(v, rebuild, unravel):
        return None
    if unravel is not None:
        theta = unravel(v)
        sde = ctx["structure"](theta)
        params = sde if "theta" in ctx else theta
        context = dict(ctx, theta=theta) if "theta" in ctx else dict(ctx)
    else:
        params, Q = rebuild(v)
        context = dict(ctx)
        if isinstance(params, SDEParams):
            if Q is not None:
                Q = np.asarray(Q)
                params = params._replace(L=jnp.asarray(psd_factor(Q), dtype=params.L.dtype))
            sde = params
        else:
            sde = None
    if sde is not None:
        discrete = discrete_on_groups(sde, ctx["reps"], ctx["groups"])
    else:
        discrete = params
    return dataclasses.replace(result, params=params, discrete=discrete, sde=sde, _context=context)


def _polish(value_and_grad, hessian, v, valid, progress: bool):
    """Quasi-Newton steps (SciPy's BFGS) on the objective from `v`, through valid points only:
    `(point reached, its objective, iterations)`.

    The inverse curvature starts from the observed information at `v` (differences of the exact
    gradient, used even where they would not be trusted for a certificate; its eigenvalues
    taken in absolute value, so a start outside the concave region still gives an ascent
    direction: a saddle-free Newton step) and is then updated from gradients alone, so a step
    costs one gradient instead of one Hessian (a gradient per free coordinate). It runs until
    the gradient is at round-off (`gtol`) or no step gains: cheap once BFGS converges
    superlinearly, and it follows a boundary (a variance going to 0) far enough for the
    certificate to see the flat direction.
    """
    import scipy.optimize  # 0.15 s: imported by the finish, not by `import sdessm`

    def negative(x):
        f, g = value_and_grad(jnp.asarray(x))
        f, g = float(f), np.asarray(g, dtype=float)
        if not (np.isfinite(f) and np.all(np.isfinite(g)) and valid(x)):
            return np.inf, np.zeros_like(x)
        return -f, -g

    h = hessian(v, rough=True)  # a starting metric: differences of the gradient will do
    if not np.all(np.isfinite(h)):
        return v, -negative(v)[0], 0
    w, V = np.linalg.eigh(-0.5 * (h + h.T))
    w = np.maximum(np.abs(w), flat_floor(w))
    inverse = (V / w) @ V.T
    bar = progress_bar()(desc="Newton finish", disable=not progress, leave=False)
    options = dict(maxiter=POLISH_ITERATIONS, gtol=1e-10, hess_inv0=0.5 * (inverse + inverse.T))
    with warnings.catch_warnings(), bar:
        warnings.simplefilter("ignore", RuntimeWarning)  # trial points that meet +inf
        warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
        res = scipy.optimize.minimize(
            negative, v, jac=True, method="BFGS", options=options, callback=lambda x: bar.update(1)
        )
    return np.asarray(res.x, dtype=float), float(-res.fun), int(res.nit)


def _certify(labels, value_and_grad, hessian, v, value, tol: float, polish: bool, valid):
    """The certificate at `v`, after at most `NEWTON_STEPS` halving Newton steps (with `polish`)
    toward it: `(v, value, gradient, information, flat coordinates, predicted gain, outside)`,
    the gain infinite where the information is not positive definite, `outside` True when the
    last Newton step gained only at points outside the valid region (a boundary)."""
    outside = False
    for step in range(NEWTON_STEPS + 1):
        h = hessian(v)
        info = -0.5 * (h + h.T)
        g = np.asarray(value_and_grad(jnp.asarray(v))[1], dtype=float)
        flat = flat_coordinates(labels, info)
        gain = float(0.5 * g @ np.linalg.solve(info, g)) if flat is None else np.inf
        if flat is not None or gain <= tol or not polish or step == NEWTON_STEPS:
            break
        direction = np.linalg.solve(info, g)
        for k in range(NEWTON_HALVINGS):
            trial = v + 0.5**k * direction
            f = float(value_and_grad(jnp.asarray(trial))[0])
            if np.isfinite(f) and f >= value:
                if valid(trial):
                    v, value, outside = trial, f, False
                    break
                outside = True
        else:
            break  # no step that does not lower the objective: round-off or a boundary
    return v, value, g, info, flat, gain, outside


def _singular_covariances(v, rebuild) -> str:
    """The covariance at the coordinates `v` nearest to singular relative to its scale, with its
    extreme eigenvalues: `"Q, smallest eigenvalue 1.2e-05 of largest 1.77e+03"`."""
    found = []
    for name, x in _covariances(v, rebuild):
        w = np.linalg.eigvalsh(x)
        found.append((w[0] / max(abs(w[-1]), np.finfo(float).tiny), name, w[0], w[-1]))
    _, name, lo, hi = min(found)
    return f"{name}, smallest eigenvalue {lo:.3g} of largest {hi:.3g}"


def _verdict(flat: str | None, gain: float, tol: float, boundary: str | None = None) -> str:
    """The report's sentence on convergence; `boundary`: the covariances at the estimate when the
    log-likelihood still rises only outside the valid region."""
    if flat is not None:
        return (
            "not certified: the log-likelihood is flat along the direction "
            f"{flat} (an estimate on a boundary, or a direction the data do not identify)"
        )
    if gain <= tol:
        return (
            f"certified: the observed information is positive definite and a Newton step would "
            f"gain {gain:.2g} <= tol = {tol:g} in log-likelihood"
        )
    if boundary is not None:
        return (
            f"not certified: the estimate is on a boundary of the valid region; a Newton step "
            f"would still gain {gain:.3g} > tol = {tol:g} in log-likelihood, but only by leaving "
            f"it (a covariance would stop being positive semi-definite: {boundary}): the "
            "local maximum over valid parameters has it singular; fix that field, or fit "
            "fewer free entries of it"
        )
    return (
        f"not certified: a Newton step would still gain {gain:.3g} > tol = {tol:g} in "
        "log-likelihood"
    )


def finish(result: EMResult, finish: str, tol: float, progress: bool = False) -> EMResult:
    """Polish the EM estimate on the exact objective and certify it.

    With `polish`, quasi-Newton steps (SciPy's BFGS from the exact information, JAX gradients;
    see `_polish`) and then, if needed, halving Newton steps on the exact marginal
    log-likelihood (plus log-prior), from the EM estimate, in the free coordinates of the
    standard errors; a point is kept only if it does not lower the objective. Then the
    certificate: the fit has converged when the observed information is positive definite and
    the gain a Newton step predicts, g' I^-1 g / 2, is at most `tol` (log-likelihood units).
    Otherwise the report says why: a flat direction (a boundary, or a direction the data do not
    identify, named by its coordinates), or the gain still predicted.
    """
    report = dict(result.report)
    if finish == "none":
        report["convergence"] = "not checked (finish='none')"
        return dataclasses.replace(result, converged=False, report=report)
    labels, v0, objective, data, rebuild, unravel, signature = objective_of(result)
    n = len(labels)
    if n == 0:
        report["convergence"] = "nothing to certify: every parameter is fixed"
        return dataclasses.replace(result, converged=True, report=report)
    if n > MAX_CERTIFIED_COORDINATES:
        report["convergence"] = (
            f"not certified: {n} free coordinates, more than the {MAX_CERTIFIED_COORDINATES} for "
            "which the exact Hessian is computed"
        )
        return dataclasses.replace(result, converged=False, report=report)
    value_and_grad_at, hessian_at = programs(objective, signature)
    value_and_grad = functools.partial(value_and_grad_at, data=data)
    v = np.asarray(v0, dtype=float)
    start = value = float(value_and_grad(jnp.asarray(v))[0])
    hessian_at = functools.partial(hessian_at, data=data)
    scales = coordinate_scales(labels, v)
    hessians = {}  # a point's Hessian costs several gradients per coordinate: computed once

    def hessian(x, rough: bool = False):
        x = np.asarray(x, dtype=float)
        key = (x.tobytes(), rough)
        if key not in hessians:
            info = observed_information(value_and_grad, hessian_at, x, scales, rough)
            hessians[key] = -info
        return hessians[key]

    def valid(x):
        return _valid(x, rebuild, unravel)

    polish = finish == "polish"
    if polish:
        x, f, iterations = _polish(value_and_grad, hessian, v, valid, progress)
        if np.isfinite(f) and f >= value and valid(x):
            v, value = x, f
        report["polish"] = {"newton_iterations": iterations, "gain": value - start}
    v, value, g, info, flat_coords, gain, outside = _certify(
        labels, value_and_grad, hessian, v, value, tol, polish, valid
    )
    flat = flat_direction(labels, info)
    boundary = _singular_covariances(v, rebuild) if outside and gain > tol else None
    moved = not np.array_equal(v, np.asarray(v0, dtype=float))  # only to valid points
    finished = _at(result, v, rebuild, unravel) if moved else result
    report.update(
        gradient_norm=float(np.linalg.norm(g)),
        predicted_gain=gain if np.isfinite(gain) else None,
        flat_direction=flat,
        flat_coordinates=flat_coords,
        coordinates=(list(labels), np.asarray(v, dtype=float)),
        convergence=_verdict(flat, gain, tol, boundary),
    )
    lls = np.asarray(finished.log_likelihoods)
    if moved:  # the finish moved the estimate: its log-likelihood is the last entry
        lls = np.append(lls, objective_loglik(finished))
        if "log_posteriors" in report:
            report["log_posteriors"] = np.append(report["log_posteriors"], value)
    context = dict(finished._context, information=(np.asarray(v, dtype=float), info))
    return dataclasses.replace(
        finished,
        log_likelihoods=lls,
        converged=flat is None and gain <= tol,
        report=report,
        _context=context,
    )
