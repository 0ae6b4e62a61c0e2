r"""The observed information of a fit and what it gives: standard errors, information criteria.

Everything here works on the exact marginal log-likelihood (plus the log-prior of a MAP fit) of
a fitted `EMResult`, in the free coordinates of its parameters: F, Q (lower triangle), H, u, R
(as structured), mu1, P1 for an SDE fit, the discrete fields for an `LGSSMParams` fit, the
leaves of theta for a structured one. `standard_errors` and `covariance` invert the observed
information; the compiled objective and its derivatives (`objective_of`, `programs`) also serve
the Newton finish (`sdessm.newton`).
"""

from __future__ import annotations

import collections
import functools
from typing import TYPE_CHECKING

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ._checks import float64
from .identify import SYMMETRIC
from .kalman import filter_sequence, loglik_sequence_compiled, map_sequences, map_sequences_jit
from .params import LGSSMParams, SDEParams, continuous_discrete
from .problem import fold_inputs, mask_flags

if TYPE_CHECKING:
    from .results import EMResult

#: Most free coordinates for which the finish computes the exact Hessian (a square of that size).
MAX_CERTIFIED_COORDINATES = 200
#: The observed information counts as singular below this fraction of its largest eigenvalue.
FLAT_RTOL = 1e-10


def _leaf_labels(tree) -> list[str]:
    """A label per scalar of a pytree, in `ravel_pytree`'s order: `theta[3]` for an array,
    `omega` or `F[0,1]` for the sites of a dict (a NumPyro model's parameters)."""
    if not isinstance(tree, dict):
        return [f"theta[{i}]" for i in range(jax.flatten_util.ravel_pytree(tree)[0].size)]
    labels = []
    for name, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = ".".join(str(getattr(k, "key", k)) for k in name)
        shape = np.shape(leaf)
        labels += [key + (f"[{','.join(map(str, ix))}]" if ix else "") for ix in np.ndindex(shape)]
    return labels


def _identity(fn):
    """A key for a function that the signature holds: a bound method by its object and function
    (a cached model's `trace_model` gives a new bound method at each access), anything else by
    its id (a callable object need not be hashable). `programs` keeps the objective, which
    holds the function, so the ids cannot be reused while an entry lives."""
    owner, function = getattr(fn, "__self__", None), getattr(fn, "__func__", None)
    if owner is not None and function is not None:
        return ("method", id(owner), id(function))
    return id(fn)


def coordinates(result: EMResult):
    """Free coordinates of the estimate: `(labels, vector, rebuild, unravel, fields, signature)`.

    `rebuild(vector, fields)` gives `(parameters, Q)`, Q None where the parameters hold it as
    L L^T or have none (discrete fits), the entries the vector does not hold taken from
    `fields` (default: the estimate's own, the `fields` returned); `unravel` maps a vector back
    to theta for structured fits. Two results with equal `signature`s have the same `rebuild`
    and `unravel` as functions of their arguments.
    """
    ctx = result._context
    if ctx["structure"] is not None and (
        "theta" in ctx or not isinstance(result.params, SDEParams)
    ):
        theta = ctx.get("theta", result.params)
        flat, unravel = jax.flatten_util.ravel_pytree(theta)

        structure = ctx["structure"]  # not `ctx`, which holds the data, in the closures

        def rebuild_structured(v, fields=None):
            return structure(unravel(v)), None

        leaves = tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(theta))
        signature = ("structured", _identity(structure), jax.tree.structure(theta), leaves)
        return _leaf_labels(theta), flat, rebuild_structured, unravel, {}, signature
    if isinstance(result.params, SDEParams):
        base = result.params._asdict()
        base["Q"] = result.params.Q
        fixed = {("Q" if f == "L" else f) for f in ctx["fixed"]}
        names = ("F", "Q", "H", "u", "R", "mu1", "P1", "B", "D")
    else:
        base = result.params._asdict()
        fixed = set(ctx["fixed"])
        names = LGSSMParams._fields
    base = {k: jnp.asarray(x) for k, x in base.items() if x is not None}
    labels, pieces, slots = [], [], []
    for name in names:
        if name in fixed or name not in base:  # held, or no input gain
            continue
        x = base[name]
        if name == "R" and ctx["R_structure"] == "isotropic":
            idx = [(0, 0)]
        elif name == "R" and ctx["R_structure"] == "diagonal":
            idx = [(i, i) for i in range(x.shape[-1])]
        elif name in SYMMETRIC and x.ndim == 2:
            idx = [(i, j) for i in range(x.shape[0]) for j in range(i + 1)]
        else:
            idx = list(np.ndindex(x.shape))
        for ix in idx:
            labels.append(f"{name}[{','.join(map(str, ix))}]")
            pieces.append(x[ix])
        slots.append((name, idx))
    vector = jnp.stack(pieces) if pieces else jnp.zeros((0,))
    isotropic, sde = ctx["R_structure"] == "isotropic", isinstance(result.params, SDEParams)

    # one scatter per field (not one per entry: `_valid` rebuilds at every trial point)
    scatters = [(name, tuple(np.asarray(idx).T), len(idx)) for name, idx in slots]

    def rebuild(v, fields=base):  # closes over no data (`programs` keeps it)
        fields = dict(fields)
        k = 0
        for name, where, size in scatters:
            x = fields[name].at[where].set(v[k : k + size])
            k += size
            if name in SYMMETRIC and x.ndim == 2:
                if name == "R" and isotropic:
                    x = x[0, 0] * jnp.eye(x.shape[0], dtype=x.dtype)
                else:
                    x = jnp.tril(x) + jnp.tril(x, -1).T
            fields[name] = x
        if sde:
            return SDEParams(**{k: fields.get(k) for k in SDEParams._fields}), fields["Q"]
        return LGSSMParams(**fields), None

    layout = tuple((name, tuple(idx)) for name, idx in slots)
    signature = ("fields", type(result.params).__name__, layout, ctx["R_structure"])
    return labels, vector, rebuild, None, base, signature


#: Compiled programs of the finish kept for later fits of the same form in this process (a
#: second fit, a bootstrap, other data of the same shape): `programs` keys them by
#: `objective_of`'s signature; the oldest is dropped beyond this many.
KEPT_PROGRAMS = 16
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


def objective_of(result: EMResult):
    """The exact objective in the free coordinates of `coordinates`:
    `(labels, v0, objective, data, rebuild, unravel, signature)`, `objective(v, data)` the
    marginal log-likelihood of all sequences (plus the log-prior of a MAP fit in structured
    coordinates), jittable; objectives with equal signatures are the same function. The data
    (observations, steps, the fixed entries) are an argument, not constants of the compiled
    program, so that a fit of other data of the same shape reuses it (`programs`, and the
    persistent compilation cache, `sdessm.cache`)."""
    ctx = result._context
    y = jnp.asarray(ctx["y"])
    labels, v0, rebuild, unravel, fields, signature = coordinates(result)
    data = (y if y.ndim == 3 else y[None], ctx["reps"], ctx["groups"], fields, ctx.get("inputs"))
    batched = ctx["groups"] is not None and ctx["groups"].ndim == 2  # None: a discrete fit
    # from the values: the program has no NaN branch then
    complete, same_mask = mask_flags(data[0])
    log_prior = ctx["log_prior"] if unravel is not None else None

    def objective(v, data, exact: bool = False):
        yb, reps, groups, fields, inputs = data
        params, Q = rebuild(v, fields)
        if isinstance(params, SDEParams):
            _, _, lg = continuous_discrete(params, reps, groups, Q)
            params_batched = batched
        else:
            lg, params_batched = params, False
        if inputs is not None:
            lg, yb, _ = fold_inputs(lg, yb, inputs, params_batched)
        if exact:  # the filter: its Hessian compiles faster than the whitened recursion's
            each = map_sequences_jit(filter_sequence, lg, yb, params_batched, complete, same_mask)
            total = jnp.sum(each.log_likelihood)
        else:  # the compiled kernel where it applies: its gradient costs about two filters
            fn = loglik_sequence_compiled
            total = jnp.sum(map_sequences_jit(fn, lg, yb, params_batched, complete, same_mask))
        if log_prior is not None:
            total = total + log_prior(unravel(v))
        return total

    with_inputs = ctx.get("inputs") is not None
    signature = signature + (batched, complete, same_mask, _identity(log_prior), with_inputs)
    return labels, v0, objective, data, rebuild, unravel, signature


def programs(objective, signature):
    """`(value_and_grad, hessian)` of `objective(v, data)`, jitted: compiled once per signature
    (and shape) in this process, the Hessian (`exact=True`: the filter's recursion) only when
    first called (`observed_information` seldom needs it)."""
    if signature in _PROGRAMS:
        _PROGRAMS.move_to_end(signature)
        return _PROGRAMS[signature][0]
    exact = functools.partial(objective, exact=True)
    programs = (jax.jit(jax.value_and_grad(objective)), jax.jit(jax.hessian(exact)))
    _PROGRAMS[signature] = (programs, objective)
    while len(_PROGRAMS) > KEPT_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return programs


#: The observed information is first computed from the exact gradient (`differenced`): central
#: differences at steps of FD_STEP and twice that, in units of each coordinate's scale, combined
#: by Richardson extrapolation. It is kept when, with the coordinates scaled to unit
#: information, the two differences agree to FD_RTOL and the smallest eigenvalue exceeds
#: FD_MARGIN; then no perturbation of that size (at most 200 * FD_RTOL) can change the
#: verdict (positive definite) and the inverse is accurate. Otherwise (a flat direction, a
#: boundary, a step that leaves the region where the log-likelihood is finite) the Hessian by
#: automatic differentiation decides.
FD_STEP, FD_RTOL, FD_MARGIN = 1e-4, 1e-6, 1e-3
#: Where the coordinates' magnitudes give steps that are not accurate, the differences are taken
#: again at FD_SE_STEP standard errors (from the first try's diagonal).
FD_SE_STEP = 1e-2


def coordinate_scales(labels, v) -> np.ndarray:
    """A scale per coordinate for finite differences: its magnitude; for an off-diagonal entry
    of a covariance, at least the geometric mean of its diagonal entries; for a zero, the
    largest magnitude in its field (1 where they are all 0)."""
    v = np.abs(np.asarray(v, dtype=float))
    value = dict(zip(labels, v, strict=True))
    fields = [label.split("[")[0] for label in labels]
    largest = {f: max(x for g, x in zip(fields, v, strict=True) if g == f) for f in set(fields)}
    scales = []
    for label, field, x in zip(labels, fields, v, strict=True):
        index = label[len(field) :].strip("[]").split(",")
        if field in SYMMETRIC and len(index) == 2 and index[0] != index[1]:
            i, j = index
            x = max(
                x, np.sqrt(value.get(f"{field}[{i},{i}]", 0) * value.get(f"{field}[{j},{j}]", 0))
            )
        scales.append(x if x > 0 else largest[field] if largest[field] > 0 else 1.0)
    return np.array(scales)


def differenced(gradient, v, scales):
    """`(-Hessian at v, trusted)` from the exact gradient `gradient(x)` at 4 n points (no
    compilation beyond the gradient's): Richardson-extrapolated central differences, trusted
    when clearly accurate and positive definite (see `FD_STEP`)."""
    v = np.asarray(v, dtype=float)
    n = v.size
    columns = {}
    for factor in (1.0, 2.0):
        D = np.empty((n, n))
        for i in range(n):
            h = FD_STEP * factor * scales[i]
            up, down = v.copy(), v.copy()
            up[i] += h
            down[i] -= h
            D[:, i] = (np.asarray(gradient(up), dtype=float) - np.asarray(gradient(down))) / (2 * h)
        columns[factor] = -0.5 * (D + D.T)
    near, far = columns[1.0], columns[2.0]
    info = (4.0 * near - far) / 3.0  # Richardson: the h^2 error terms cancel
    diagonal = np.diag(info)
    if not (np.all(np.isfinite(info)) and np.all(diagonal > 0)):
        return info, False
    s = 1.0 / np.sqrt(diagonal)
    error = np.abs(near - far) * np.outer(s, s)  # 3 x the error of `near`, far above `info`'s
    scaled = info * np.outer(s, s)
    return info, bool(error.max() <= FD_RTOL and np.linalg.eigvalsh(scaled).min() >= FD_MARGIN)


def observed_information(value_and_grad, hessian, v, scales, rough: bool = False) -> np.ndarray:
    """The observed information `-Hessian` at `v`, symmetrised, as NumPy: `differenced` from
    `value_and_grad(x)`'s gradient where that is trusted (at steps from `scales`, else from
    the standard errors those steps suggest), else `-hessian(x)` (automatic differentiation,
    compiled on first use). `rough`: any finite differences will do (a starting metric)."""

    def gradient(x):
        return value_and_grad(jnp.asarray(x))[1]

    info, trusted = differenced(gradient, v, scales)
    finite = np.all(np.isfinite(info))
    if rough and finite:
        return info
    diagonal = np.diag(info)
    if not trusted and finite and np.all(diagonal > 0):
        info, trusted = differenced(gradient, v, FD_SE_STEP / FD_STEP / np.sqrt(diagonal))
    if trusted:
        return info
    h = np.asarray(hessian(jnp.asarray(v, dtype=float)), dtype=float)
    return -0.5 * (h + h.T)


def flat_floor(w) -> float:
    """Eigenvalues of the observed information at or below this are flat (`FLAT_RTOL`)."""
    return FLAT_RTOL * max(1.0, float(np.abs(w).max()))


def flat_coordinates(labels, info) -> list[tuple[str, float]] | None:
    """None when `info` is positive definite, else the largest components of its flattest
    direction, `[(label, component), ...]`."""
    if not np.all(np.isfinite(info)):
        return [(label, float("nan")) for label in labels[:4]]
    w, V = np.linalg.eigh(info)
    if w.min() > flat_floor(w):
        return None
    top = np.argsort(-np.abs(V[:, 0]))[:4]
    return [(labels[i], float(V[i, 0])) for i in top]


def flat_direction(labels, info) -> str | None:
    """None when `info` is positive definite, else the coordinates of its flattest direction."""
    flat = flat_coordinates(labels, info)
    return None if flat is None else ", ".join(f"{name} ({c:+.2f})" for name, c in flat)


def _information_at_estimate(result: EMResult, labels, v0, objective, data, signature):
    """The observed information at the estimate: the finish's, or computed now."""
    cached = result._context.get("information")  # the finish's, at this very point
    if cached is not None and np.allclose(cached[0], np.asarray(v0), rtol=1e-12, atol=1e-14):
        return cached[1]
    value_and_grad, hessian = programs(objective, signature)
    return observed_information(
        functools.partial(value_and_grad, data=data),
        functools.partial(hessian, data=data),
        v0,
        coordinate_scales(labels, v0),
    )


@float64
def _covariance(result: EMResult):
    """(labels, estimate vector, inverse observed information, unravel) in free coordinates."""
    ctx = result._context
    labels, v0, objective, data, _, unravel, signature = objective_of(result)
    if ctx["log_prior"] is not None and unravel is None:
        raise ValueError(
            "standard errors of a MAP fit are given in the structured coordinates: fit with "
            "`structure=` to get them."
        )
    info = _information_at_estimate(result, labels, v0, objective, data, signature)
    flat = flat_direction(labels, info)
    if flat is not None:
        w = np.linalg.eigvalsh(info)
        raise ValueError(
            f"the observed information is not positive definite (smallest eigenvalue "
            f"{w.min():.3g}): the estimate is on a boundary or the data do not identify the "
            f"direction {flat}. Fix some of these parameters (e.g. H) and refit."
        )
    w, V = np.linalg.eigh(info)
    return labels, np.asarray(v0), (V / w) @ V.T, unravel


def objective_loglik(result: EMResult) -> float:
    """The marginal log-likelihood (without log-prior) of the result's parameters."""
    ctx = result._context
    y = jnp.asarray(ctx["y"])
    yb = y if y.ndim == 3 else y[None]
    if result.sde is not None:
        _, _, lg = continuous_discrete(result.sde, ctx["reps"], ctx["groups"])
        batched = ctx["groups"].ndim == 2
    else:
        lg, batched = result.discrete, False
    if ctx.get("inputs") is not None:
        lg, yb, _ = fold_inputs(lg, yb, ctx["inputs"], batched)
    return float(jnp.sum(map_sequences(filter_sequence, lg, yb, batched).log_likelihood))


def covariance(result: EMResult) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`(labels, estimate, cov)`: the free coordinates of a fit (as in `standard_errors`, e.g.
    `"F[0,1]"`, `"Q[1,0]"`), their values, and the inverse observed information.

    Use it for the delta method on functions of several parameters (eigenvalues of F).
    """
    labels, estimate, cov, _ = _covariance(result)
    return labels, estimate, cov


@float64
def standard_errors(result: EMResult):
    """Standard errors of the free parameters of a fit, from the observed information.

    The Hessian of the exact marginal log-likelihood (plus the log-prior for MAP) at the
    estimate (`observed_information`: Richardson-extrapolated differences of the exact gradient
    where they are clearly accurate, JAX's Hessian otherwise), in the coordinates F, Q (lower
    triangle), H, u, R (as structured), mu1, P1 (lower triangle) for an SDE fit, the discrete
    fields for an `LGSSMParams` fit, or the leaves of theta for a structured fit.

    Args:
        result (EMResult): what `fit_em` returned.

    Returns:
        (dict | PyTree): a dict of arrays shaped like the fields (NaN where fixed), or for a
            structured fit a pytree shaped like theta.

    Raises:
        ValueError: the Hessian is not negative definite (a boundary estimate, or a direction
            the data do not identify, e.g. F, L and H all free); the message names the
            coordinates of the flattest direction.
    """
    labels, _, cov, unravel = _covariance(result)
    se = np.sqrt(np.diag(cov))
    if unravel is not None:  # the same pytree structure as theta
        return jax.tree.map(np.asarray, unravel(jnp.asarray(se)))
    out: dict[str, np.ndarray] = {}
    for label, value in zip(labels, se, strict=True):
        name, ix = label.split("[")
        ix = tuple(int(i) for i in ix.rstrip("]").split(","))
        if name not in out:
            shape = np.shape(result.params.Q if name == "Q" else getattr(result.params, name))
            out[name] = np.full(shape, np.nan)
        out[name][ix] = value
        if name in SYMMETRIC and len(ix) == 2:
            out[name][ix[::-1]] = value
    if "R" in out and result._context["R_structure"] == "isotropic":
        out["R"] = np.where(np.eye(out["R"].shape[0], dtype=bool), out["R"][0, 0], np.nan)
    return out


@float64
def information_criteria(result: EMResult) -> dict:
    r"""AIC, AICc and BIC of a fit, from its log-likelihood and its identified parameters.

    The number of parameters k counts the directions the data identify: the free coordinates
    of the standard errors (fixed fields, and the entries a structure of R or a symmetric
    matrix does not free, are not coordinates), less the directions along which the observed
    information vanishes (below `FLAT_RTOL` of its largest eigenvalue). Those are a change of
    state coordinates that leaves the law of the data unchanged (F, L and H all free: $d^2$
    of them for a general d-dimensional state), or an estimate on a boundary. n counts the
    observed values (entries of y that are not NaN).

    $\mathrm{AIC} = 2k - 2\ell$, $\mathrm{AICc} = \mathrm{AIC} + 2k(k + 1) / (n - k - 1)$
    (NaN when $n \le k + 1$), $\mathrm{BIC} = k \log n - 2\ell$, with $\ell$ the maximised
    log-likelihood (without the log-prior of a MAP fit); lower is better.

    Args:
        result (EMResult): what `fit_em` returned.

    Returns:
        dict: `log_likelihood`, `free_coordinates`, `flat_directions`, `parameters` (k),
            `observations` (n), `aic`, `aicc`, `bic`.
    """
    labels, v0, objective, data, _, _, signature = objective_of(result)
    free = len(labels)
    if 0 < free <= MAX_CERTIFIED_COORDINATES:
        info = _information_at_estimate(result, labels, v0, objective, data, signature)
        w = np.linalg.eigvalsh(info) if np.all(np.isfinite(info)) else np.zeros(free)
        flat = int(np.sum(w <= flat_floor(w)))
    else:  # no Hessian for so many coordinates: all counted
        flat = 0
    k = free - flat
    n = int(np.sum(~np.isnan(np.asarray(result._context["y"]))))
    ll = result.log_likelihood
    aic = 2.0 * k - 2.0 * ll
    return {
        "log_likelihood": ll,
        "free_coordinates": free,
        "flat_directions": flat,
        "parameters": k,
        "observations": n,
        "aic": aic,
        "aicc": aic + 2.0 * k * (k + 1) / (n - k - 1) if n > k + 1 else float("nan"),
        "bic": k * np.log(n) - 2.0 * ll,
    }
