"""NUTS on a NumPyro LTI-SDE model (`fit_nuts`), the states marginalised by the Kalman filter.

The model is read as for EM (`sdessm.model_em.trace_model`), and the result is ArviZ data with
the EM estimate and the truth attached as JSON attributes of the posterior group. A long run
can be checkpointed and resumed (`checkpoint=`), with the same draws as one uninterrupted run.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint as ckpt
from ._checks import check_count, check_something_observed, float64
from .model_em import (
    TracedModel,
    initial_values,
    numpyro_config,
    trace_key,
    trace_model,
    uniform_steps,
)
from .problem import is_complete
from .recursion import STEADY_STEPS
from .residuals import innovations
from .results import EMResult

#: Attribute names under which `fit_nuts` stores the EM estimate and the truth (JSON).
EM_ATTR, TRUTH_ATTR = "sdessm_em", "sdessm_truth"
#: NUTS's most tree doublings per draw (NumPyro's default), also given to ArviZ for
#: `reached_max_tree_depth` with checkpointed runs.
MAX_TREE_DEPTH = 10
#: Most values of the pointwise log-likelihood `fit_nuts` stores by default (draws x sequences x
#: times): 2^25 float64 values, 256 MiB. Above it, one value per sequence (see `pointwise`).
POINTWISE_LIMIT = 2**25
#: Draws evaluated together by `pointwise_log_likelihood` (a bound on its memory).
POINTWISE_BATCH = 64


def _default_chain_method(tm: TracedModel, num_chains: int) -> str:
    """Parallel with a device per chain; else sequential where the log-likelihood takes its
    steady-state form (vectorised chains would evaluate both branches of its convergence check),
    vectorised otherwise (one batched gradient costs about as much as a single one on a CPU)."""
    if jax.local_device_count() >= num_chains:
        return "parallel"
    steady = is_complete(tm.y) and uniform_steps(tm.times) and tm.y.shape[-2] > 2 * STEADY_STEPS
    return "sequential" if steady else "vectorized"


def _jsonable(values: dict) -> str:
    return json.dumps({k: np.asarray(v, dtype=float).tolist() for k, v in values.items()})


@float64
def fit_nuts(
    model: Callable,
    y,
    times,
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    init=None,
    truth: dict | None = None,
    seed: int = 0,
    chain_method: str | None = None,
    target_accept_prob: float = 0.8,
    model_kwargs: dict | None = None,
    progress: bool = True,
    checkpoint=None,
    checkpoint_every: int = 100,
    pointwise: bool | None = None,
):
    r"""NUTS on a NumPyro LTI-SDE model, the states marginalised by the Kalman filter.

    Args:
        model: a NumPyro model `model(times, y=None, **model_kwargs)` with one LTISDE site.
        y (ArrayLike): `(T, p)` or `(B, T, p)` observations, NaN = missing.
        times (ArrayLike): `(T,)` observation times.
        num_warmup: NUTS warm-up (adaptation) iterations per chain.
        num_samples: NUTS draws kept per chain.
        num_chains: the number of chains.
        init (EMResult | dict | None): None (chains start at the prior medians), site values
            (dict), or the `EMResult` of `fit_em(model, ...)`: every chain starts there and the
            estimate is attached.
        truth: the true site values of simulated data, attached for `recovery_table`.
        seed: the random seed.
        chain_method: NumPyro's `"parallel"`, `"sequential"` or `"vectorized"`; by default
            parallel when there are as many devices as chains, else sequential for long
            complete data on uniform steps (where the log-likelihood takes its steady-state
            form, whose run-time check vectorised chains would evaluate both ways) and
            vectorised otherwise.
        target_accept_prob: the NUTS step-size adaptation target.
        progress: show NumPyro's progress bar.
        checkpoint (str | os.PathLike | None): a file to save the run in (atomically): after
            warm-up and after every `checkpoint_every` draws per chain, the sampler's state
            (positions, adapted step size and mass matrix, random keys) and the draws so far.
            If the file exists and was written by this run (same model, data, settings, seed
            and start), the run continues from it: an interrupted run resumes where it was
            saved, and a finished one is extended to a larger `num_samples` without a new
            warm-up. Resumed or not, the draws are the same.
        checkpoint_every: draws per chain between checkpoints.
        pointwise: store the log-likelihood of every observation time (True) or of every
            sequence (False); None: pointwise unless that is more than `POINTWISE_LIMIT`
            values (draws x sequences x times), with a warning.

    Returns:
        (InferenceData | DataTree): ArviZ data (`InferenceData` with ArviZ 0.x, `DataTree` with
            ArviZ 1.x) with posterior, sample_stats, observed_data and log_likelihood groups; the
            posterior's attributes `sdessm_em` and `sdessm_truth` hold the EM estimate and the
            truth as JSON. The log_likelihood group holds, under the name of the model's LTISDE
            site, the one-step-ahead predictive log density $\log p(y_k \mid y_{1:k-1},
            \theta)$ of each observation time at each draw (`pointwise_log_likelihood`), over
            the times with at least one observed value: dimension `time` for one sequence,
            `sequence` and `time` for several, or `observation` (with coordinates `sequence`
            and `time`) when some of their rows are wholly missing. They sum to the
            log-likelihood, so `az.loo` and `az.compare` (and `az.waic` in ArviZ 0.x) run on
            it; see `sdessm.leave_future_out` for why leave-future-out is the comparison to
            trust on a time series.
    """
    num_samples, num_chains, num_warmup, checkpoint_every = _check_counts(
        num_samples, num_chains, num_warmup, checkpoint_every
    )
    import arviz as az

    tm = trace_model(model, y, times, model_kwargs)
    check_something_observed(tm.y, "the posterior would be the prior")
    start = None if init is None else initial_values(tm, init, jax.random.key(seed))
    if truth is not None:
        truth = tm.check_values(truth, "truth")
    if chain_method is None:
        chain_method = _default_chain_method(tm, num_chains)
    settings = dict(num_warmup=num_warmup, num_chains=num_chains, chain_method=chain_method)
    mcmc = _mcmc(model, start, num_samples, progress, target_accept_prob, **settings)
    args, kwargs = (tm.times,), dict(y=tm.y, **tm.kwargs)
    with numpyro_config():
        if checkpoint is None:
            mcmc.run(jax.random.key(seed), *args, **kwargs)
        else:
            key = _checkpoint_key(model, tm, start, seed, target_accept_prob, **settings)
            mcmc = _run_checkpointed(mcmc, checkpoint, checkpoint_every, key, seed, args, kwargs)
        idata = az.from_numpyro(mcmc, log_likelihood=False)
    samples = mcmc.get_samples(group_by_chain=True)
    _add_group(idata, "log_likelihood", _log_likelihood_group(tm, samples, pointwise))
    return _attach(idata, start if isinstance(init, EMResult) else None, truth)


@float64
def pointwise_log_likelihood(
    model: Callable, samples: dict, y, times, model_kwargs: dict | None = None
) -> np.ndarray:
    r"""The one-step-ahead predictive log density of every observation time, at every draw.

    $\log p(y_k \mid y_{1:k-1}, \theta)$ for each draw $\theta$ of `samples`, from the Kalman
    filter (`sdessm.innovations`): over a sequence they sum to its log-likelihood (the
    prediction-error decomposition), so they are the pointwise log-likelihood that ArviZ's
    `loo` and `compare` read, and the terms of leave-future-out (`sdessm.leave_future_out`).

    Args:
        model: the NumPyro model, as for `fit_nuts`.
        samples: site name -> draws with any leading sample axes (e.g. `(chain, draw)`), for
            every parameter site of the model (other entries are ignored).
        y (ArrayLike): `(T, p)` or `(B, T, p)` observations, NaN = missing.
        times (ArrayLike): `(T,)` observation times.
        model_kwargs: the model's other keyword arguments.

    Returns:
        `(*S, *B, T)`: `S` the sample axes, `B` the sequences; 0 at a time with no observed
            value.

    Raises:
        ValueError: a parameter site missing from `samples`, or draws whose shape disagrees
            with the site's.
    """
    tm = trace_model(model, y, times, model_kwargs)
    return _pointwise(tm, samples)


def _pointwise(tm: TracedModel, samples: dict, *, per_sequence: bool = False) -> np.ndarray:
    """`pointwise_log_likelihood` of a traced model; summed over time with `per_sequence`."""
    missing = [k for k in tm.names if k not in samples]
    if missing:
        raise ValueError(f"`samples` has no draws of the site(s) {missing}.")
    lead = None
    flat = {}
    for k in tm.names:
        v = jnp.asarray(samples[k], dtype=float)
        core = tm.shapes[k]
        if v.ndim < len(core) or tuple(v.shape[v.ndim - len(core) :]) != core:
            raise ValueError(f"draws of `{k}` must have shape (..., *{core}); got {v.shape}.")
        here = tuple(v.shape[: v.ndim - len(core)])
        if lead is not None and here != lead:
            raise ValueError(f"the sites' draws have different sample shapes: {lead} and {here}.")
        lead = here
        flat[k] = v.reshape((-1, *core))
    with numpyro_config():
        out = _pointwise_program(tm, per_sequence)(flat)
    return np.asarray(out).reshape(lead + out.shape[1:])


@functools.lru_cache(maxsize=8)
def _pointwise_program(tm: TracedModel, per_sequence: bool):
    """The compiled `_pointwise` of one traced model (the data closed over, so complete data
    keep their fast path), kept so that later calls on the same data (a posterior extended,
    the refits of `leave_future_out`) do not compile again."""

    def one(values):
        lti = tm.ltisde(values)
        densities = innovations(lti.params, tm.y, tm.times, inputs=lti.inputs).log_densities
        return jnp.sum(densities, axis=-1) if per_sequence else densities

    return jax.jit(lambda flat: jax.lax.map(one, flat, batch_size=POINTWISE_BATCH))


def _log_likelihood_group(tm: TracedModel, samples: dict, pointwise: bool | None):
    """The log_likelihood group of `fit_nuts` as an xarray Dataset (its docstring says which)."""
    import xarray as xr

    chains, draws = np.shape(samples[tm.names[0]])[:2]
    sample_coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    batch, T = tm.y.shape[:-2], tm.y.shape[-2]
    size = chains * draws * math.prod(batch) * T
    if pointwise is None:
        pointwise = size <= POINTWISE_LIMIT
        if not pointwise:
            warnings.warn(
                f"the pointwise log-likelihood would hold {size:,} values (more than "
                f"{POINTWISE_LIMIT:,}); stored per sequence instead. Pass pointwise=True to "
                "store it anyway (for az.loo and az.compare).",
                stacklevel=3,
            )
    if not pointwise:
        ll = _pointwise(tm, samples, per_sequence=True)
        dims = ("chain", "draw", *(("sequence",) if batch else ()))
        return xr.Dataset({tm.site: (dims, ll)}, coords=sample_coords)
    ll = _pointwise(tm, samples)
    observed = ~np.all(np.isnan(tm.y), axis=-1)  # (*B, T)
    times = np.broadcast_to(np.asarray(tm.times, dtype=float), observed.shape)
    if not batch:
        data = (("chain", "draw", "time"), ll[..., observed])
        return xr.Dataset({tm.site: data}, coords={**sample_coords, "time": times[observed]})
    if observed.all():
        data = (("chain", "draw", "sequence", "time"), ll)
        coords = {"sequence": np.arange(batch[0]), "time": times[0]}
        return xr.Dataset({tm.site: data}, coords={**sample_coords, **coords})
    sequence, step = np.nonzero(observed)
    coords = {"sequence": ("observation", sequence), "time": ("observation", times[observed])}
    data = (("chain", "draw", "observation"), ll[:, :, sequence, step])
    return xr.Dataset({tm.site: data}, coords={**sample_coords, **coords})


def _add_group(idata, name: str, dataset) -> None:
    """Add a group to ArviZ data: `InferenceData.add_groups` (0.x) or a `DataTree` child (1.x)."""
    if hasattr(idata, "add_groups"):
        idata.add_groups({name: dataset})
    else:
        idata[name] = dataset


def _check_counts(num_samples, num_chains, num_warmup, checkpoint_every) -> tuple[int, ...]:
    """`fit_nuts`'s counts as integers, or a ValueError naming the first that is not a count."""
    return (
        check_count("num_samples", num_samples),
        check_count("num_chains", num_chains),
        check_count("num_warmup", num_warmup, minimum=0),
        check_count("checkpoint_every", checkpoint_every),
    )


def _mcmc(
    model, start, num_samples, progress, target_accept_prob, *, num_warmup, num_chains, chain_method
):
    """NumPyro's NUTS kernel and MCMC driver; the chains start at `start` (site values), or at
    the prior medians when it is None."""
    from numpyro.infer import MCMC, NUTS, init_to_median, init_to_value

    if start is None:
        strategy = init_to_median(num_samples=15)
    else:
        strategy = init_to_value(values=start)
    kernel = NUTS(
        model,
        init_strategy=strategy,
        target_accept_prob=target_accept_prob,
        max_tree_depth=MAX_TREE_DEPTH,
    )
    return MCMC(
        kernel,
        num_warmup=int(num_warmup),
        num_samples=int(num_samples),
        num_chains=int(num_chains),
        chain_method=chain_method,
        progress_bar=progress,
    )


def _checkpoint_key(
    model, tm: TracedModel, start, seed, target_accept_prob, *, num_warmup, num_chains, chain_method
) -> str:
    """The fingerprint of a checkpointed run: what it was started from and with, so that a
    checkpoint file is only ever continued by the same run."""
    traced_kwargs = trace_key(model, tm.y, tm.times, tm.kwargs)
    if traced_kwargs is None:
        raise ValueError(
            "`checkpoint` needs `model_kwargs` whose values have a stable repr (numbers, "
            "strings, arrays): a resumed run must recognise them."
        )
    return ckpt.fingerprint(
        {} if start is None else start,
        model=f"{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', '')}",
        y=tm.y,
        times=tm.times,
        model_kwargs=traced_kwargs[2],
        num_warmup=int(num_warmup),
        num_chains=int(num_chains),
        chain_method=chain_method,
        target_accept_prob=float(target_accept_prob),
        seed=int(seed),
    )


def _attach(idata, em_values: dict | None, truth: dict | None):
    """`idata` with the EM estimate and the truth, where given, as JSON attributes of its
    posterior group."""
    attrs = idata["posterior"].attrs
    if em_values is not None:
        attrs[EM_ATTR] = _jsonable(em_values)
    if truth is not None:
        attrs[TRUTH_ATTR] = _jsonable(truth)
    return idata


def _run_checkpointed(mcmc, path, every: int, key: str, seed: int, args, kwargs) -> _Draws:
    """Warm-up, then draws in blocks of `every` per chain, each followed by a checkpoint; continue
    from `path` if it holds this run. Returns every draw, for ArviZ, as one run's would be."""
    total = mcmc.num_samples
    # the tree structure of the saved state: one chain's initial state, traced abstractly (no
    # compilation) on a copy of the kernel (`init` sets up the kernel for the chains it is given)
    kernel = copy.copy(mcmc.sampler)
    template = jax.eval_shape(
        lambda k: kernel.init(k, mcmc.num_warmup, None, args, kwargs), jax.random.key(0)
    )
    saved = ckpt.load_sampler(path, template, key)
    if saved is None:
        mcmc.warmup(jax.random.key(seed), *args, **kwargs)
        state, draws, done = mcmc.post_warmup_state, None, 0
        ckpt.save_sampler(path, state, draws, done, key)
    else:
        state, draws, done = saved["state"], saved["draws"], saved["num_draws"]
        if draws is not None and set(draws) != {"samples", "stats"}:
            raise ValueError(
                f"`checkpoint` {path} holds its draws in the form of an earlier version of "
                "sdessm; remove it to start afresh, or choose another path."
            )
    while done < total:
        mcmc.num_samples = min(every, total - done)
        mcmc.post_warmup_state = state
        mcmc.run(state.rng_key, *args, **kwargs)
        block = jax.device_get(
            {
                "samples": mcmc.get_samples(group_by_chain=True),
                "stats": mcmc.get_extra_fields(group_by_chain=True),
            }
        )
        draws = block if draws is None else jax.tree.map(_append_draws, draws, block)
        state, done = mcmc.last_state, done + mcmc.num_samples
        ckpt.save_sampler(path, state, draws, done, key)
    mcmc.num_samples = total
    cut = jax.tree.map(lambda a: np.asarray(a)[:, :total], draws)
    return _Draws(mcmc, cut["samples"], cut["stats"], args, kwargs)


class _Draws:
    """Draws of a NUTS run gathered block by block, in the form ArviZ's NumPyro converter reads
    an `MCMC` object (ArviZ 0.23: `get_samples`, `get_extra_fields`, the chains, the model and
    its arguments) or an inference adapter (ArviZ 1.x: `sample_dims`, `sample_shape`,
    `get_sample_stats`), so that `az.from_numpyro` converts them as it converts one run."""

    sample_dims = ["chain", "draw"]  # noqa: RUF012 (ArviZ reads it as a list)
    thinning = 1

    def __init__(self, mcmc, samples: dict, stats: dict, args, kwargs):
        self.sampler, self.model = mcmc.sampler, mcmc.sampler.model
        self.num_chains = mcmc.num_chains
        self.num_samples = int(np.shape(next(iter(samples.values())))[1])
        self.sample_shape = (self.num_chains, self.num_samples)
        self._samples, self._stats = samples, stats
        self._args, self._kwargs = tuple(args), dict(kwargs)  # the converter's names for them
        self._max_tree_depth = MAX_TREE_DEPTH
        self.prng_key_func = jax.random.PRNGKey

    @staticmethod
    def _grouped(draws: dict, group_by_chain: bool) -> dict:
        if group_by_chain:
            return dict(draws)
        return {k: np.reshape(v, (-1,) + np.shape(v)[2:]) for k, v in draws.items()}

    def get_samples(self, group_by_chain: bool = True, **kwargs) -> dict:
        return self._grouped(self._samples, group_by_chain)

    def get_extra_fields(self, group_by_chain: bool = True, **kwargs) -> dict:
        return self._grouped(self._stats, group_by_chain)

    def get_sample_stats(self, **kwargs) -> dict:
        return self._grouped(self._stats, True)


def _append_draws(a, b):
    return np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
