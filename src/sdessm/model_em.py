"""EM over the sample sites of a NumPyro model, and the reading of the model that NUTS shares.

A model is a NumPyro function `model(times, y=None, **kwargs)` that samples its parameter sites
from priors and observes `y` through exactly one `LTISDE` site. `trace_model` reads the model
once and gives the maps that both inferences (EM here, NUTS in `sdessm.infer`) need:
unconstrained <-> constrained site values, site values -> `SDEParams` (by running the model with
the values substituted), and the log-prior.

`fit_em_model` (what `sdessm.fit_em(model, ...)` calls) is generalized EM whose E-step runs
through the LTISDE site and whose M-step maximises over the unconstrained sites; MAP adds the
log-prior of the sites in their own (constrained) coordinates, so the answer is the mode of the
posterior density of the named parameters, not of their transforms. A model that marks itself
closed form (`EM_CLOSED_FORM` and `from_sde` in its module, the unconstrained zoo model) gets the
derivation's closed-form EM for `objective="mle"` on uniform steps.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from ._checks import check_something_observed, float64
from .em import run_em
from .kalman import log_likelihood
from .params import SDEParams
from .ppl import LTISDE
from .results import EMResult


@contextlib.contextmanager
def numpyro_config():
    """NumPyro's internals mix dtypes and ranks: run them under JAX's permissive defaults even
    when the caller has made promotion strict."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def _is_ltisde(fn) -> bool:
    while fn is not None:
        if isinstance(fn, LTISDE):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def _unwrap_ltisde(fn):
    while not isinstance(fn, LTISDE):
        fn = fn.base_dist
    return fn


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (a jit static argument)
class TracedModel:
    """A NumPyro model read once at given data: its parameter sites and its LTISDE site.

    Attributes:
        model: the model function.
        times, y: the data it was traced at; `kwargs` its other keyword arguments.
        site: the name of the observed `LTISDE` site.
        supports: parameter site name -> its support (a NumPyro constraint).
        shapes: parameter site name -> the shape of its value.
    """

    model: Callable
    times: np.ndarray
    y: np.ndarray
    kwargs: dict
    site: str
    supports: dict
    shapes: dict

    @property
    def names(self) -> list[str]:
        return list(self.supports)

    def _run(self, values: dict):
        model = handlers.substitute(self.model, data=values)
        seeded = handlers.seed(handlers.substitute(model, substitute_fn=_no_draw), rng_seed=0)
        with numpyro_config():
            return handlers.trace(seeded).get_trace(self.times, y=self.y, **self.kwargs)

    @functools.cached_property
    def inputs(self) -> np.ndarray | None:
        """The known inputs of the LTISDE site (None without input gains): data, the same at
        any parameter values (read from a draw of the prior)."""
        with jax.ensure_compile_time_eval():  # concrete even when first asked inside a jit
            v = _unwrap_ltisde(self._run({})[self.site]["fn"]).inputs
            return None if v is None else np.asarray(v, dtype=float)

    @functools.cached_property
    def logliks(self):
        """`logliks(zs, y)`: the exact log-likelihood at each of a batch of unconstrained site
        values, jitted once per traced model (`y` an argument: one program for all data of its
        shape)."""

        @jax.jit
        @functools.partial(jax.vmap, in_axes=(0, None))
        def logliks(z, y):
            return jnp.sum(log_likelihood(self.sde_at(z), y, self.times, inputs=self.inputs))

        return logliks

    def constrain(self, z: dict) -> dict:
        return {k: biject_to(self.supports[k])(z[k]) for k in self.supports}

    def unconstrain(self, values: dict) -> dict:
        return {k: biject_to(self.supports[k]).inv(jnp.asarray(values[k])) for k in self.supports}

    def sde_at(self, z: dict) -> SDEParams:
        """The `SDEParams` at unconstrained site values `z` (EM's coordinates). A bound method of
        a cached `TracedModel` is the same jit static argument call after call, so repeated fits
        of one model to one data set compile once."""
        return self.sde(self.constrain(z))

    def log_prior_at(self, z: dict):
        """`log_prior` at unconstrained site values `z` (no Jacobian: MAP in the sites' own
        coordinates)."""
        return self.log_prior(self.constrain(z))

    def sde(self, values: dict) -> SDEParams:
        """The `SDEParams` the model builds from the given (constrained) site values."""
        return self.ltisde(values).params

    def ltisde(self, values: dict) -> LTISDE:
        """The `LTISDE` distribution of the observed site at the given (constrained) values."""
        return _unwrap_ltisde(self._run(values)[self.site]["fn"])

    def log_prior(self, values: dict):
        """Sum of the sites' prior log-densities at the (constrained) values; no Jacobian."""
        trace = self._run(values)
        return sum(jnp.sum(trace[k]["fn"].log_prob(trace[k]["value"])) for k in self.supports)

    def check_values(self, values: dict, what: str) -> dict:
        """`values` as float arrays, or a ValueError naming missing/unknown sites and shapes."""
        if not isinstance(values, dict):
            raise TypeError(f"`{what}` must be a dict of site values; got {type(values).__name__}.")
        missing, unknown = set(self.names) - set(values), set(values) - set(self.names)
        if missing or unknown:
            raise ValueError(
                f"`{what}` does not fit this model: its parameter sites are {self.names}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; not in the model {sorted(unknown)}" if unknown else "")
                + "."
            )
        out = {}
        for k in self.names:
            v = jnp.asarray(values[k], dtype=float)
            if v.shape != self.shapes[k]:
                raise ValueError(
                    f"`{what}[{k!r}]` must have shape {self.shapes[k]}; got {v.shape}."
                )
            out[k] = v
        return out


#: The most recent traced models, by model, data, times and keyword arguments.
_TRACED: collections.OrderedDict = collections.OrderedDict()
_TRACED_SIZE = 8


def trace_model(model: Callable, y, times, model_kwargs: dict | None = None) -> TracedModel:
    """Read `model(times, y=y, **model_kwargs)` once and check it is an LTI-SDE model.

    The same model, data, times and keyword arguments give back the same `TracedModel` (the
    last few are kept), so that what was compiled for it is reused.

    Raises:
        ValueError: no observed `LTISDE` site or more than one, duplicate site names, a discrete
            parameter site, or data whose shape disagrees with the model's.
    """
    if not callable(model):
        raise TypeError(f"`model` must be a NumPyro model function; got {type(model).__name__}.")
    kwargs = dict(model_kwargs or {})
    if "y" in kwargs:
        raise ValueError("pass the data as `y`, not inside `model_kwargs`.")
    y = np.asarray(y, dtype=float)
    times = np.asarray(times, dtype=float)
    key = trace_key(model, y, times, kwargs)
    if key is not None and key in _TRACED:
        _TRACED.move_to_end(key)
        return _TRACED[key]
    tm = _trace_model(model, y, times, kwargs)
    if key is not None:
        _TRACED[key] = tm
        while len(_TRACED) > _TRACED_SIZE:
            _TRACED.popitem(last=False)
    return tm


def trace_key(model, y, times, kwargs):
    """A hashable key of the arguments, or None when the keyword arguments have no stable repr."""
    try:
        extra = repr(sorted(kwargs.items()))
    except TypeError:
        return None
    if " at 0x" in extra:  # objects compared by identity: do not cache
        return None
    digest = hashlib.sha256()
    for a in (y, times):
        digest.update(f"{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return (model, digest.hexdigest(), extra)


def _no_draw(site):
    """A value for a latent sample site without drawing from its distribution: the image of 0
    under the transform to its support (drawing compiles a sampler per distribution and shape,
    seconds for a Beta's or a Gamma's); None (a draw) where there is no such transform."""
    if site["type"] != "sample" or site["is_observed"] or site["value"] is not None:
        return None  # data, or a value substituted already
    if site["fn"].is_discrete:
        return None
    shape = tuple(site["kwargs"].get("sample_shape", ())) + tuple(site["fn"].shape())
    try:
        transform = biject_to(site["fn"].support)
        return transform(jnp.zeros(transform.inverse_shape(shape)))
    except NotImplementedError:
        return None


def _trace_model(model, y, times, kwargs) -> TracedModel:
    try:
        with numpyro_config():
            seeded = handlers.seed(handlers.substitute(model, substitute_fn=_no_draw), rng_seed=0)
            trace = handlers.trace(seeded).get_trace(times, y=y, **kwargs)
    except AssertionError as err:  # NumPyro asserts unique site names
        if "unique" in str(err):
            raise ValueError(f"the model's sample sites clash: {err}") from None
        raise
    except ValueError:
        raise
    except Exception as err:  # the model's own code: say where, keep the traceback as the cause
        raise ValueError(
            f"the model failed when called as `model(times, y=y)`: {type(err).__name__}: {err}"
        ) from err
    sites = {n: s for n, s in trace.items() if s["type"] == "sample"}
    lti = [n for n, s in sites.items() if _is_ltisde(s["fn"])]
    if len(lti) != 1:
        raise ValueError(
            "the model must observe its data through exactly one `LTISDE` sample site; "
            + (f"it has {len(lti)}: {lti}." if lti else f"it has none (its sites: {list(sites)}).")
        )
    site = lti[0]
    if not sites[site]["is_observed"]:
        raise ValueError(f"the LTISDE site {site!r} is not observed: pass `y` to it as `obs=y`.")
    event = tuple(_unwrap_ltisde(sites[site]["fn"]).event_shape)
    if y.shape[-2:] != event or y.ndim not in (2, 3):
        raise ValueError(
            f"`y` has shape {y.shape}, but the model's LTISDE site {site!r} expects (T, p) = "
            f"{event} (or (B, T, p)) at these `times`."
        )
    supports, shapes = {}, {}
    for n, s in sites.items():
        if n == site or s["is_observed"]:
            continue
        if s["fn"].is_discrete:
            raise ValueError(f"site {n!r} is discrete; EM and NUTS need continuous parameters.")
        supports[n] = s["fn"].support
        shapes[n] = tuple(jnp.shape(s["value"]))
    if not supports:
        raise ValueError("the model has no parameter sites to fit.")
    return TracedModel(model, times, y, kwargs, site, supports, shapes)


def initial_values(tm: TracedModel, init, key, partial: bool = False) -> dict:
    """Site values to start from: given (a dict, or an EMResult of this model) or the default
    start (the best by log-likelihood of the prior medians, the model's `start_from_data` and
    perturbations of it); with `partial`, a dict may give some sites, the others default."""
    if isinstance(init, EMResult):
        if not isinstance(init.params, dict):
            raise ValueError(
                "`init` is an EMResult of an `SDEParams` fit, not of a NumPyro model; fit the "
                "model with `fit_em(model, ...)` first."
            )
        return tm.check_values(init.params, "init")
    if partial and isinstance(init, dict) and set(init) < set(tm.names):  # others: default
        return tm.check_values({**initial_values(tm, None, key), **init}, "init")
    if init is not None:
        return tm.check_values(init, "init")
    return _best_start(tm, key)


#: Perturbations of the model's start from the data tried beside it, and their scale (a standard
#: deviation in the unconstrained coordinates: a factor of about 1.6 on a positive site).
JITTERED_STARTS, JITTER = 6, 0.5


def _prior_medians(tm: TracedModel, key) -> dict:
    from numpyro.infer import init_to_median

    seeded = handlers.substitute(handlers.seed(tm.model, key), substitute_fn=init_to_median)
    with numpyro_config():
        trace = handlers.trace(seeded).get_trace(tm.times, y=tm.y, **tm.kwargs)
    return {k: jnp.asarray(trace[k]["value"], dtype=float) for k in tm.names}


def _best_start(tm: TracedModel, key) -> dict:
    """The default start: of the prior medians, the model's start from the data
    (`start_from_data(times, y, **model_kwargs)` in the model's module, if it has one) and
    `JITTERED_STARTS` random perturbations of it, the one with the highest exact
    log-likelihood (evaluated on all of them at once)."""
    candidates = [_prior_medians(tm, key)]
    from_data = getattr(inspect.getmodule(tm.model), "start_from_data", None)
    if from_data is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # e.g. a constant column
                start = tm.check_values(from_data(tm.times, tm.y, **tm.kwargs), "start_from_data")
        except (ValueError, TypeError, ArithmeticError) as err:
            warnings.warn(
                f"the model's start_from_data failed ({type(err).__name__}: {err}); EM starts "
                "from the prior medians.",
                stacklevel=3,
            )
        else:
            flat, unravel = jax.flatten_util.ravel_pytree(tm.unconstrain(start))
            steps = JITTER * jax.random.normal(
                jax.random.fold_in(key, 1), (JITTERED_STARTS, flat.shape[0])
            )
            candidates += [start] + [tm.constrain(unravel(flat + step)) for step in steps]
    if len(candidates) == 1:
        return candidates[0]
    zs = jax.tree.map(lambda *v: jnp.stack(v), *[tm.unconstrain(c) for c in candidates])
    with numpyro_config():
        values = np.asarray(tm.logliks(zs, jnp.asarray(tm.y)))
    values = np.where(np.isfinite(values), values, -np.inf)
    return candidates[int(np.argmax(values))]


def _closed_form_marker(model):
    module = inspect.getmodule(model)
    marker = getattr(module, "EM_CLOSED_FORM", None)
    from_sde = getattr(module, "from_sde", None)
    return (marker, from_sde) if marker is not None and from_sde is not None else None


def uniform_steps(times) -> bool:
    """Whether `times` are equally spaced (to a relative 1e-12)."""
    steps = np.diff(np.asarray(times, dtype=float), axis=-1)
    return bool(np.allclose(steps, steps.flat[0], rtol=1e-12, atol=0.0))


def _as_numpy(values: dict) -> dict:
    return {k: np.asarray(v) for k, v in values.items()}


@float64
def fit_em_model(
    model: Callable,
    y,
    times,
    *,
    objective: str = "mle",
    init=None,
    model_kwargs: dict | None = None,
    seed: int = 0,
    **em_kwargs,
):
    """EM on a NumPyro model; see `sdessm.fit_em`. `params` of the result is a dict of site values.

    Args:
        model: a NumPyro model `model(times, y=None, **model_kwargs)` with one LTISDE site.
        y (ArrayLike): `(T, p)` or `(B, T, p)` observations, NaN = missing.
        times (ArrayLike): `(T,)` observation times.
        objective: `"mle"` (maximum likelihood) or `"map"` (posterior mode of the named sites).
        init (dict | None): starting site values (constrained); the sites it leaves out (all of
            them when None) take the default start: the best by exact log-likelihood of the
            prior medians, the model's `start_from_data` and perturbations of it
            (`docs/em.md`). With None, EM also runs from each start of the model's
            `more_starts_from_data(times, y, **model_kwargs)`, if it has one, and keeps the fit
            of highest final objective; `report["starts"]` lists the runs. With a `checkpoint`
            file, the run from extra start i keeps its own, `<stem>.start<i><suffix>` beside it.
        model_kwargs: further keyword arguments of the model.
        seed: seeds the default start (prior medians by Monte Carlo, perturbations).
        **em_kwargs (Any): `num_iters`, `tol`, `finish`, `mstep_iters`, `progress`, `psd`.

    Returns:
        (EMResult): `params` is a dict of site values.
    """
    if objective not in ("mle", "map"):
        raise ValueError(f"`objective` must be 'mle' or 'map'; got {objective!r}.")
    not_here = {"fixed", "structure", "log_prior", "R_structure", "emissions", "dt"} & set(
        em_kwargs
    )
    if not_here:
        raise ValueError(
            f"{sorted(not_here)} do not apply to a NumPyro model: express constants and "
            "structure in the model itself."
        )
    if times is None:
        raise ValueError("`times` is required to fit a NumPyro model.")
    tm = trace_model(model, y, times, model_kwargs)
    check_something_observed(tm.y, "EM would estimate its emission parameters from nothing")
    values = initial_values(tm, init, jax.random.key(seed), partial=True)
    fit = functools.partial(_fit_from, tm, y, times, objective, _closed_form_marker(model))
    result = fit(values, em_kwargs)
    extras = _more_starts(tm) if init is None else []
    if not extras:
        return result
    tried = [result]
    for i, start in enumerate(extras, 1):  # each with its progress bar and its own checkpoint
        kwargs = dict(em_kwargs)
        if kwargs.get("checkpoint") is not None:
            path = Path(kwargs["checkpoint"])
            kwargs["checkpoint"] = path.with_name(f"{path.stem}.start{i}{path.suffix}")
        tried.append(fit(start, kwargs))
    scores = [_objective(tm, r, objective) for r in tried]
    best = int(np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf)))
    report = dict(tried[best].report)
    report["starts"] = [
        {"start": "default" if i == 0 else f"more_starts_from_data[{i - 1}]",
         "objective": float(v), "converged": bool(r.converged), "chosen": i == best}
        for i, (r, v) in enumerate(zip(tried, scores, strict=True))
    ]  # fmt: skip
    return dataclasses.replace(tried[best], report=report)


def _more_starts(tm: TracedModel) -> list[dict]:
    """Starts in other basins that the model's module offers (`more_starts_from_data(times, y,
    **model_kwargs)`, a list of site values), checked; EM runs from each of them too."""
    more = getattr(inspect.getmodule(tm.model), "more_starts_from_data", None)
    if more is None:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            starts = more(tm.times, tm.y, **tm.kwargs)
            return [tm.check_values(s, "more_starts_from_data") for s in starts]
    except (ValueError, TypeError, ArithmeticError) as err:
        warnings.warn(
            f"the model's more_starts_from_data failed ({type(err).__name__}: {err}); EM runs "
            "from its default start only.",
            stacklevel=3,
        )
        return []


def _objective(tm: TracedModel, result: EMResult, objective: str) -> float:
    """The final value of what the fit maximises: the log-likelihood, plus the log-prior for
    MAP."""
    value = float(np.sum(result.log_likelihoods[-1]))
    if objective == "map":
        with numpyro_config():
            value += float(tm.log_prior({k: jnp.asarray(v) for k, v in result.params.items()}))
    return value


def _fit_from(tm: TracedModel, y, times, objective: str, closed, values: dict, em_kwargs: dict):
    """EM on the model from the site values `values`; the result in the named coordinates."""
    if objective == "mle" and closed is not None and uniform_steps(times):
        marker, from_sde = closed
        result = run_em(tm.sde(values), y, times, **marker, inputs=tm.inputs, **em_kwargs)
        report = dict(result.report, model_sites=tm.names)
        try:
            params = _as_numpy(from_sde(result.sde))
        except ValueError:  # the maximum is at a singular Q, outside this model's L
            params, report = _nudged_inside(from_sde, result.sde, report)
            result = dataclasses.replace(result, converged=False)
        # standard errors and later calls work in the named coordinates, as for other models
        context = dict(result._context, structure=tm.sde, log_prior=None, information=None)
        return dataclasses.replace(result, params=params, report=report, _context=context)

    structure = tm.sde_at
    log_prior = tm.log_prior_at if objective == "map" else None
    with numpyro_config():
        result = run_em(
            tm.unconstrain(values), y, times, structure=structure, log_prior=log_prior,
            inputs=tm.inputs, **em_kwargs,
        )  # fmt: skip
        params = _as_numpy(tm.constrain(result.params))
    # standard errors and later calls work in the named (constrained) coordinates
    context = dict(
        result._context,
        structure=tm.sde,
        log_prior=tm.log_prior if objective == "map" else None,
        information=None,  # the finish's was in the unconstrained coordinates
    )
    report = dict(result.report, model_sites=tm.names, objective=objective)
    report["boundary"] = _at_boundary(tm, params, report)
    return dataclasses.replace(result, params=params, report=report, _context=context)


#: How far inside a singular diffusion Q a model whose L has a positive diagonal is put, as a
#: fraction of Q's largest eigenvalue.
NUDGE = 1e-10


def _nudged_inside(from_sde, sde: SDEParams, report: dict):
    """Site values of a closed-form fit whose Q is singular (a boundary of a model whose L has a
    positive diagonal): Q + NUDGE * max eig(Q) I instead, with the report saying so."""
    Q = np.asarray(sde.Q)
    w = np.linalg.eigvalsh(Q)
    Q = Q + NUDGE * max(w.max(), np.finfo(float).tiny) * np.eye(len(Q))
    params = _as_numpy(from_sde(sde._replace(L=np.linalg.cholesky(Q))))
    report = dict(report, boundary={"Q": (float(w.min()), 0.0)})
    report["convergence"] = (
        f"not certified: the maximum has a singular diffusion Q (smallest eigenvalue "
        f"{w.min():.3g}), a boundary of this model, whose L has a positive diagonal; the "
        f"estimate is moved inside by {NUDGE:g} of Q's scale"
    )
    return params, report


#: An unconstrained coordinate beyond this (a factor e^12 from the bound of an exp transform)
#: on a flat direction of the log-likelihood: the site sits at the edge of its support.
BOUNDARY_COORDINATE = 12.0


def _at_boundary(tm: TracedModel, params: dict, report: dict) -> dict:
    """Sites at the edge of their support, `{site: (value, bound)}`: on the flat direction
    of the fit's certificate, with an unconstrained coordinate beyond `BOUNDARY_COORDINATE`
    (a variance collapsing to 0, a damping ratio at 1, ...)."""
    flat = report.get("flat_coordinates") or []
    labels, values = report.get("coordinates", ([], []))
    coordinate = dict(zip(labels, values, strict=True))
    out = {}
    for label, component in flat:
        site = label.split("[")[0]
        z = coordinate.get(label)
        if site not in tm.supports or z is None or not abs(component) >= 0.3:
            continue
        if abs(z) < BOUNDARY_COORDINATE:
            continue
        support = tm.supports[site]
        while hasattr(support, "base_constraint"):  # a vector site: its elements' support
            support = support.base_constraint
        bound = getattr(support, "lower_bound" if z < 0 else "upper_bound", None)
        if bound is None:  # an unbounded side (e.g. a positive site growing without bound)
            bound = float("inf") if z > 0 else float("-inf")
        index = label[len(site) :]
        value = np.asarray(params[site])
        if index:
            value = value[tuple(int(i) for i in index.strip("[]").split(","))]
        out[label] = (float(value), float(np.max(np.asarray(bound))))
    return out
