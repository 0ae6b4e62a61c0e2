r"""Forecasting: the predictive law of future states and observations given the data.

At fixed parameters the forecast is exact and Gaussian. The filter gives
$p(x_T \mid y_{1:T}) = N(m_T, P_T)$ at the last observation time $t_T$; each future time
$f_n > t_T$ is reached by the exact transition over the step $f_n - f_{n-1}$ (with $f_0 = t_T$),

$$m_n = A_n m_{n-1}, \qquad P_n = A_n P_{n-1} A_n^\top + \Sigma_n,$$

and the future observation is $y(f_n) \mid y_{1:T} \sim N(H m_n + u,\; H P_n H^\top + R)$.

Under a posterior (NUTS draws of a NumPyro model), `forecast_posterior` draws one future path of
states and observations per posterior draw from that law: the draws form the posterior predictive
distribution, which carries the parameter uncertainty as well as the process and observation
noise. Its pointwise quantiles are the usual predictive bands.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import (
    as_float_array,
    check_count,
    check_finite,
    check_inputs,
    check_times,
    concrete,
    float64,
)
from .discretize import symmetrize
from .io import posterior_draws
from .kalman import filter_sequence
from .params import LGSSMParams, SDEParams, as_arrays, transitions
from .problem import emitted, is_complete, resolve, respond
from .recursion import predict
from .results import EMResult
from .simulate import psd_sqrt


class Forecast(NamedTuple):
    r"""Output of `forecast`; with `B` sequences every field but `times` gains a leading `B` axis.

    Entry `n` is the law given all the data, $p(\,\cdot\,(f_n) \mid y_{1:T})$, at the future
    time `times[n]`.
    """

    times: Float[Array, "*B N"]
    state_means: Float[Array, "*B N d"]
    state_covs: Float[Array, "*B N d d"]
    obs_means: Float[Array, "*B N p"]
    obs_covs: Float[Array, "*B N p p"]


class PosteriorForecast(NamedTuple):
    """Output of `forecast_posterior`: one future path per posterior draw.

    `obs_draws[s]` and `state_draws[s]` are a path drawn under posterior draw `s`; together they
    are draws of the posterior predictive distribution. `quantiles` gives pointwise bands.
    """

    times: Float[Array, "*B N"]
    state_draws: Float[Array, "S *B N d"]
    obs_draws: Float[Array, "S *B N p"]

    def quantiles(self, q: ArrayLike) -> np.ndarray:
        """Pointwise quantiles of the future observations, `(len(q), *B, N, p)`."""
        return np.quantile(np.asarray(self.obs_draws), np.asarray(q), axis=0)


def bands(result: Forecast | PosteriorForecast, level: float = 0.95) -> dict[str, np.ndarray]:
    """Pointwise predictive bands of the future observations of one sequence.

    Returns a dict of `(N, p)` arrays: `"mean"`, `"lower"` and `"upper"` (the central `level`
    interval), and `"sd"` for a `Forecast` (normal quantiles) or `"median"` for a
    `PosteriorForecast` (quantiles of the draws).
    """
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1); got {level}.")
    tail = (1 - level) / 2
    if isinstance(result, PosteriorForecast):
        draws = np.asarray(result.obs_draws)
        if draws.ndim != 3:
            raise ValueError(f"bands are for one sequence ((S, N, p) draws); got {draws.shape}.")
        low, med, high = np.quantile(draws, [tail, 0.5, 1 - tail], axis=0)
        return {"mean": draws.mean(0), "median": med, "lower": low, "upper": high}
    from scipy.stats import norm

    mean = np.asarray(result.obs_means)
    if mean.ndim != 2:
        raise ValueError(f"bands are for one sequence ((N, p) means); got {mean.shape}.")
    sd = np.sqrt(np.clip(np.diagonal(np.asarray(result.obs_covs), axis1=-2, axis2=-1), 0, None))
    z = norm.ppf(1 - tail)
    return {"mean": mean, "sd": sd, "lower": mean - z * sd, "upper": mean + z * sd}


# --------------------------------------------------------------------------- the recursion


def _propagate(m, P, A, Sigma):
    """Moments at each future time from `N(m, P)` at the last observation: `(N, d)`, `(N, d, d)`."""

    def step(carry, xs):
        m, P = predict(*carry, *xs)
        return (m, P), (m, P)

    _, (means, covs) = jax.lax.scan(step, (m, P), (A, Sigma))
    return means, covs


def _forecast_one(past: LGSSMParams, y, A, Sigma, complete: bool = False):
    """`(state_means, state_covs, obs_means, obs_covs)` of one sequence."""
    filt = filter_sequence(past, y, complete)
    means, covs = _propagate(filt.filtered_means[-1], filt.filtered_covs[-1], A, Sigma)
    H, u, R = past.H, past.u, past.R
    obs_means = means @ H.T + u[None, :]
    obs_covs = symmetrize(H @ covs @ H.T + R[None])
    return means, covs, obs_means, obs_covs


def _sample_path(key, past: LGSSMParams, y, A, Sigma, complete: bool = False):
    """One future path `(x (N, d), y (N, p))` drawn from the forecast law of one sequence."""
    filt = filter_sequence(past, y, complete)
    N, d = A.shape[0], A.shape[-1]
    p = past.H.shape[0]
    k0, kx, ky = jax.random.split(key, 3)
    x0 = filt.filtered_means[-1] + psd_sqrt(filt.filtered_covs[-1]) @ jax.random.normal(
        k0, (d,), dtype=A.dtype
    )

    def step(x, xs):
        A_n, Sigma_n, z = xs
        x = A_n @ x + psd_sqrt(Sigma_n) @ z
        return x, x

    z = jax.random.normal(kx, (N, d), dtype=A.dtype)
    _, xs = jax.lax.scan(step, x0, (A, Sigma, z))
    e = jax.random.normal(ky, (N, p), dtype=A.dtype) @ psd_sqrt(past.R).T
    return xs, xs @ past.H.T + past.u[None, :] + e


# --------------------------------------------------------------------------- public boundary


def _future_steps(params, y, times, future_times, dt, num_steps):
    """`(future_times, steps)`: absolute future times and the steps from the last observation,
    each `(N,)`, or `(B, N)` when the sequences end at different times."""
    T = np.shape(y)[-2]
    if future_times is not None and num_steps is not None:
        raise ValueError("give either `future_times` or `num_steps`, not both.")
    if isinstance(params, LGSSMParams):
        if future_times is not None:
            raise ValueError(
                "an `LGSSMParams` has no time axis: give `num_steps` (steps of its own `A`, "
                "`Sigma`), or forecast from an `SDEParams` at `future_times`."
            )
        if num_steps is None:
            raise ValueError("give `num_steps`, the number of steps to forecast.")
        return None, None
    if future_times is None:
        if num_steps is None:
            raise ValueError("give `future_times` (or `num_steps` with a uniform `dt`).")
        if dt is None:
            raise ValueError(
                "`num_steps` needs a uniform `dt`; with observation `times`, give `future_times`."
            )
        num_steps = check_count("num_steps", num_steps)
        future_times = dt * (T - 1 + np.arange(1, num_steps + 1))
    if concrete(future_times) is None:
        raise ValueError("`future_times` must be concrete (not traced): they set the shapes.")
    try:
        future_times = np.asarray(future_times, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"`future_times` must be a numeric array (N,) or (B, N); got {future_times!r:.80}."
        ) from None
    if future_times.ndim not in (1, 2) or future_times.shape[-1] < 1:
        raise ValueError(
            f"`future_times` must have shape (N,) or (B, N) with N >= 1; got {future_times.shape}."
        )
    check_finite("future_times", future_times)
    check_times("future_times", future_times)
    if times is None:
        last = np.asarray(dt * (T - 1), dtype=float)
    else:
        v = concrete(times)
        if v is None:
            raise ValueError("`times` must be concrete (not traced) to forecast.")
        last = np.asarray(v, dtype=float)[..., -1]
    if future_times.ndim == 2 and (np.ndim(y) != 3 or future_times.shape[0] != np.shape(y)[0]):
        raise ValueError(
            f"`future_times` of shape {future_times.shape} gives one grid per sequence, so `y` "
            f"must be ({future_times.shape[0]}, T, p); got {np.shape(y)}."
        )
    first = future_times[..., 0]
    if np.any(first <= last):
        raise ValueError(
            f"`future_times` must start after the last observation time {np.max(last):.6g}; "
            f"its first entry is {float(np.min(first)):.6g}."
        )
    batch = np.broadcast_shapes(last.shape, future_times.shape[:-1])
    last = np.broadcast_to(last, batch)
    future_times = np.broadcast_to(future_times, (*batch, future_times.shape[-1]))
    steps = np.diff(np.concatenate([last[..., None], future_times], axis=-1), axis=-1)
    return future_times, steps


def _setup(params, y, times, future_times, dt, num_steps, inputs=None, future_inputs=None):
    """Validate and resolve into `(past Problem, A, Sigma, future_batched, future_times, ahead)`
    with `A`, `Sigma` of the future steps and `ahead` the inputs' part of the future state and
    observation means (`(s, H s + D v)`, or None without inputs)."""
    if isinstance(params, EMResult):
        params = params.sde if params.sde is not None else params.params
    if not isinstance(params, SDEParams | LGSSMParams):
        raise TypeError(
            "`params` must be SDEParams, LGSSMParams or an EMResult; got "
            f"{type(params).__name__} (for a NumPyro model's site values use `model_sde`)."
        )
    future_times, steps = _future_steps(params, y, times, future_times, dt, num_steps)
    problem = resolve(params, y, times, dt, inputs)
    past, y = problem.params, problem.y
    with_inputs = params.B is not None or params.D is not None
    if with_inputs and future_inputs is None:
        raise ValueError(
            "the model has input gains (`B`/`D`): give `future_inputs` (N, m), the known inputs "
            "at the future times (the step from the last observation uses its own input)."
        )
    if not with_inputs and future_inputs is not None:
        raise ValueError("`future_inputs` were given but the model has no input gain `B`/`D`.")
    tv = past.time_varying()
    if tv["H"] or tv["u"] or tv["R"] or np.ndim(params.D) == 3:
        raise ValueError(
            "forecasting needs time-invariant emissions (`H`, `u`, `R`, `D` without a time axis): "
            "the future has no per-step values."
        )
    if isinstance(params, LGSSMParams):
        if tv["A"] or tv["Sigma"] or tv["B"]:
            raise ValueError(
                "`num_steps` continues a time-invariant `LGSSMParams`; this one has per-step "
                "`A`/`Sigma`. Forecast from the `SDEParams` at `future_times` instead."
            )
        num_steps = check_count("num_steps", num_steps)
        A = jnp.broadcast_to(past.A, (num_steps, *past.A.shape))
        Sigma = jnp.broadcast_to(past.Sigma, (num_steps, *past.Sigma.shape))
        future_times = np.arange(1, num_steps + 1, dtype=float)
        B = None if params.B is None else jnp.broadcast_to(params.B, (num_steps, *params.B.shape))
        ahead = _ahead(params, problem, inputs, future_inputs, A, B, False, y)
        return problem, A, Sigma, False, future_times, ahead
    A, Sigma, B = transitions(as_arrays(params), steps)
    future_batched = steps.ndim == 2
    if future_batched and y.ndim != 3:
        raise ValueError(f"per-sequence `times` need `y` of shape (B, T, p); got {y.shape}.")
    ahead = _ahead(params, problem, inputs, future_inputs, A, B, future_batched, y)
    return problem, A, Sigma, future_batched, future_times, ahead


def _ahead(params, problem, inputs, future_inputs, A, B, future_batched, y):
    """The inputs' part of the future means: the state's deterministic response, continued from
    its value at the last observation with the inputs held over each step (the last observed
    input over the first), and what it and `D` add to the observations; None without inputs."""
    if future_inputs is None:
        return None
    N, m = A.shape[-3], params.input_dim
    B_seq = y.shape[0] if y.ndim == 3 else None
    v = check_inputs(inputs, y.shape[-2], m, B_seq)
    f = check_inputs(future_inputs, N, m, B_seq, "future_inputs")
    s = None
    if problem.offset is not None:
        if y.ndim == 3:  # one row of inputs per sequence
            v, f = (jnp.broadcast_to(a, (B_seq, *a.shape[-2:])) for a in (v, f))
        held = jnp.concatenate([v[..., -1:, :], f], axis=-2)  # N + 1 rows; the last is unused
        s_T = problem.offset[..., -1, :]
        if y.ndim == 2:
            s = respond(A, B, held, s_T)[1:]
        else:
            ax = 0 if future_batched else None
            s = jax.vmap(lambda A, B, w, s1: respond(A, B, w, s1)[1:], in_axes=(ax, ax, 0, 0))(
                A, B, held, s_T
            )
    return s, emitted(params, s, f, (*y.shape[:-2], N, y.shape[-1]))


@functools.partial(jax.jit, static_argnums=(0, 3, 6, 7))  # compiled once per shape and flags
def _apply(fn, past, y, past_batched, A, Sigma, future_batched, complete, *extra):
    """Run a one-sequence `fn(*extra, past, y, A, Sigma, complete)` over `(T, p)` or `(B, T, p)`."""
    if y.ndim == 2:
        return fn(*extra, past, y, A, Sigma, complete)
    axes_past = LGSSMParams(0, 0, None, None, None, None, None) if past_batched else None
    axes_future = 0 if future_batched else None
    extra_axes = (0,) * len(extra)
    one = lambda *a: fn(*a, complete)  # noqa: E731
    return jax.vmap(one, in_axes=(*extra_axes, axes_past, 0, axes_future, axes_future))(
        *extra, past, y, A, Sigma
    )


@float64
def forecast(
    params: SDEParams | LGSSMParams,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, "*#B T"] | None = None,
    future_times: Float[ArrayLike, "*#B N"] | None = None,
    *,
    dt: float | None = None,
    num_steps: int | None = None,
    inputs: Float[ArrayLike, "*#B T m"] | None = None,
    future_inputs: Float[ArrayLike, "*#B N m"] | None = None,
) -> Forecast:
    r"""Predictive means and covariances of future states and observations given `y`.

    Args:
        params: an `SDEParams` (or the `EMResult` of an SDE fit), or a time-invariant
            `LGSSMParams` (forecast `num_steps` of its own steps).
        y: observations `(T, p)` or `(B, T, p)`; NaN marks a missing value.
        times: observation times `(T,)` or `(B, T)`, as for `kalman_filter`.
        future_times: the times to forecast, `(N,)` (or `(B, N)`), strictly increasing and after
            the last observation time of every sequence.
        dt: a uniform step instead of `times` (observations at `0, dt, ..., (T-1) dt`).
        num_steps: with `dt` (or an `LGSSMParams`), forecast `N = num_steps` steps of that size
            instead of giving `future_times`.
        inputs: the known inputs `(T, m)` (or `(B, T, m)`) of the data, for a model with the
            input gains `B`/`D` (see `kalman_filter`).
        future_inputs: the known inputs at the future times, `(N, m)` (or `(B, N, m)`),
            required with `inputs`. Inputs are held over each step: the step from the last
            observation to the first future time uses the last row of `inputs`, the step into
            future time n + 1 row n of `future_inputs`.

    Returns:
        A `Forecast`: the future `times` and, at each, the means and covariances of the state and
        of the observation (the latter including `R`).

    Raises:
        ValueError: future times not after the data, not increasing or not finite; per-step
            emissions; `future_inputs` missing for a model with inputs, given for one without,
            of a wrong shape or not finite; and every error of `kalman_filter`.

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
        >>> fc = sdessm.forecast(rw, jnp.array([[2.0]]), jnp.array([0.0]), jnp.array([1.0, 3.0]))
        >>> fc.obs_means[:, 0].round(12).tolist()        # E[x_1 | y_1 = 2] = 1, a random walk
        [1.0, 1.0]
        >>> fc.state_covs[:, 0, 0].round(12).tolist()   # Var[x_1 | y_1] = 1/2, plus Q * step
        [1.5, 3.5]
    """
    past, A, Sigma, fb, future_times, ahead = _setup(
        params, y, times, future_times, dt, num_steps, inputs, future_inputs
    )
    means, covs, obs_means, obs_covs = _apply(_forecast_one, *past[:3], A, Sigma, fb, past.complete)
    if ahead is not None:
        s, emitted_ahead = ahead
        means = means if s is None else means + s
        obs_means = obs_means + emitted_ahead
    return Forecast(jnp.asarray(future_times), means, covs, obs_means, obs_covs)


def _draw_values(posterior, names: list[str]) -> dict[str, np.ndarray]:
    """Site name -> draws `(S, *shape)` from ArviZ data (chains stacked) or a dict of arrays."""
    if isinstance(posterior, dict):
        return {k: np.asarray(posterior[k], dtype=float) for k in names}
    draws = posterior_draws(posterior)
    missing = set(names) - set(draws)
    if missing:
        raise ValueError(f"the posterior has no draws of the model's sites {sorted(missing)}.")
    return {k: draws[k].reshape((-1, *draws[k].shape[2:])) for k in names}


def model_sde(model: Callable, values: dict, y, times, model_kwargs: dict | None = None):
    """The `SDEParams` that a NumPyro LTI-SDE model builds from the given site values."""
    from .model_em import trace_model

    tm = trace_model(model, y, times, model_kwargs)
    return tm.sde(tm.check_values(values, "values"))


@float64
def forecast_posterior(
    model: Callable,
    posterior,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, " T"],
    future_times: Float[ArrayLike, " N"],
    *,
    num_draws: int | None = None,
    seed: int = 0,
    model_kwargs: dict | None = None,
    future_inputs: Float[ArrayLike, "*#B N m"] | None = None,
) -> PosteriorForecast:
    """Posterior predictive draws of future states and observations of a NumPyro model.

    For each posterior draw of the parameters, one future path is drawn from the exact forecast
    law at those parameters (`forecast`), starting from a draw of the filtered last state.

    Args:
        model: the NumPyro model `model(times, y=None, **model_kwargs)` that was sampled.
        posterior (InferenceData | DataTree | dict): the ArviZ data of `fit_nuts` (chains are
            pooled), or a dict of site draws with a leading draw axis `(S, *shape)`.
        y: the observations `(T, p)` or `(B, T, p)` the posterior conditions on.
        times: their times `(T,)`.
        future_times: `(N,)` times after the last observation, strictly increasing.
        num_draws: use this many posterior draws, evenly thinned (default: all).
        seed: the random seed of the paths.
        model_kwargs: the model's other keyword arguments (a driven model's `inputs` among
            them).
        future_inputs: `(N, m)` known inputs at `future_times`, for a model with input gains.

    Returns:
        A `PosteriorForecast`: `state_draws (S, *B, N, d)` and `obs_draws (S, *B, N, p)`.
    """
    from .model_em import trace_model

    tm = trace_model(model, y, times, model_kwargs)
    draws = _draw_values(posterior, tm.names)
    S = len(next(iter(draws.values())))
    if num_draws is not None:
        num_draws = check_count("num_draws", num_draws)
        keep = np.unique(np.linspace(0, S - 1, min(int(num_draws), S)).round().astype(int))
        draws = {k: v[keep] for k, v in draws.items()}
        S = len(keep)
    for k, v in draws.items():
        if v.shape[1:] != tm.shapes[k]:
            raise ValueError(
                f"draws of site {k!r} have shape {v.shape[1:]}; the model's is {tm.shapes[k]}."
            )
        check_finite(f"posterior[{k!r}]", v)
    complete = is_complete(y)
    sde0 = tm.sde({k: jnp.asarray(v[0]) for k, v in draws.items()})
    inputs = tm.inputs
    future = (future_times, None, None, inputs, future_inputs)
    _setup(sde0, y, times, *future)  # validate once, eagerly
    y_arr = as_float_array(y, "y")

    def one(key, values):
        sde = tm.sde(values)
        past, A, Sigma, fb, _, ahead = _setup(sde, y_arr, times, *future)
        B = past.y.shape[0] if past.y.ndim == 3 else None
        keys = key if B is None else jax.random.split(key, B)
        xs, ys = _apply(_sample_path, *past[:3], A, Sigma, fb, complete, keys)
        if ahead is not None:  # the inputs' part of the future means
            s, emitted_ahead = ahead
            xs, ys = (xs if s is None else xs + s), ys + emitted_ahead
        return xs, ys

    keys = jax.random.split(jax.random.key(seed), S)
    values = {k: jnp.asarray(v) for k, v in draws.items()}
    xs, ys = jax.jit(jax.vmap(one))(keys, values)
    return PosteriorForecast(jnp.asarray(np.asarray(future_times, dtype=float)), xs, ys)
