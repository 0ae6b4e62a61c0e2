r"""Leave-future-out cross-validation: how well a model predicts each observation from the past.

`az.loo` on the log_likelihood group of `fit_nuts` is an approximation on a time series: the
posterior that leaves $y_k$ out still conditions on every later observation, so it scores an
interpolation, not a forecast, and the stored terms $\log p(y_k \mid y_{1:k-1}, \theta)$ are
not conditionally independent given $\theta$ (PSIS-LOO assumes they are). Leave-future-out
(Bürkner, Gabry and Vehtari 2020, "Approximate leave-future-out cross-validation for Bayesian
time series models", J. Stat. Comput. Simul. 90(14)) scores what a forecaster needs, for every
row $k$ from `min_observations` on:

$$\mathrm{elpd}_k = \log p(y_k \mid y_{1:k-1})
  = \log \int p(y_k \mid y_{1:k-1}, \theta)\, p(\theta \mid y_{1:k-1})\, d\theta.$$

`method="exact"` samples $p(\theta \mid y_{1:k-1})$ by NUTS for every $k$. `method="approx"`
(PSIS-LFO) refits only when it must: from the last refit, on rows before $k^*$, it reweights
the draws toward $p(\theta \mid y_{1:k-1})$ with the ratios
$\prod_{j = k^*}^{k-1} p(y_j \mid y_{1:j-1}, \theta)$, Pareto-smoothed (ArviZ's PSIS), and
refits at $k$ when the Pareto $\hat k$ exceeds `k_threshold`.

A refit on rows before $k$ is NUTS on the same series with every later row missing (NaN): the
Kalman filter leaves them out exactly, and every refit has the shape of the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from ._checks import check_count, progress_bar
from .infer import fit_nuts, pointwise_log_likelihood


class LFOResult(NamedTuple):
    """Output of `leave_future_out`: the estimate and its parts, one entry per predicted row."""

    elpd: float  # the sum of `pointwise`
    se: float  # its standard error, sqrt(n var(pointwise)), as for LOO
    pointwise: np.ndarray  # (n,) elpd_k of each predicted row
    rows: np.ndarray  # (n,) the predicted rows (0-based)
    times: np.ndarray  # (n,) their times
    pareto_k: np.ndarray  # (n,) k-hat of the importance weights; NaN where refitted
    refits: tuple[int, ...]  # the rows k whose posterior p(theta | y_{1:k-1}) was sampled
    method: str  # "approx" or "exact"


def psis(log_ratios) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance sampling (ArviZ): normalised log weights and the Pareto k-hat.

    Args:
        log_ratios (ArrayLike): `(S,)` log importance ratios of the draws.

    Returns:
        `(log_weights (S,), k_hat)`, the log weights summing (as weights) to one.
    """
    log_ratios = np.asarray(log_ratios, dtype=float)
    try:
        from arviz_stats.base import array_stats  # ArviZ 1.x: smooths the negated input
    except ImportError:
        import arviz as az

        log_weights, k_hat = az.psislw(log_ratios, reff=1.0)
    else:
        log_weights, k_hat = array_stats.psislw(-log_ratios, r_eff=1.0)
    log_weights = np.asarray(log_weights, dtype=float)
    return log_weights - logsumexp(log_weights), float(k_hat)


def leave_future_out(
    model: Callable,
    y,
    times,
    *,
    min_observations: int,
    method: str = "approx",
    k_threshold: float = 0.7,
    model_kwargs: dict | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> LFOResult:
    r"""One-step-ahead leave-future-out cross-validation of a NumPyro LTI-SDE model.

    The expected log predictive density of each row $k \ge$ `min_observations` (0-based) given
    the rows before it, with the parameters' uncertainty (module docstring); rows with no
    observed value are not predicted. Compare models by `elpd` (higher is better) with `se`.

    Args:
        model: a NumPyro model `model(times, y=None, **model_kwargs)` with one LTISDE site.
        y (ArrayLike): `(T, p)` observations of one sequence, NaN = missing.
        times (ArrayLike): `(T,)` observation times.
        min_observations: the rows every prediction is conditioned on at least (>= 1).
        method: `"approx"` (PSIS-LFO, refits when needed) or `"exact"` (a refit per row).
        k_threshold: the Pareto k-hat above which `"approx"` refits (0.7 as Bürkner et al.).
        model_kwargs: the model's other keyword arguments.
        num_warmup: NUTS warm-up per chain and refit.
        num_samples: NUTS draws per chain and refit.
        num_chains: chains per refit.
        seed: the random seed of the first refit (refit i uses `seed + i`).
        progress: a progress bar over the predicted rows.

    Returns:
        An `LFOResult`.

    Raises:
        ValueError: `y` of several sequences, `min_observations` not in `[1, T)`, no row to
            predict, an unknown `method`, or what `fit_nuts` refuses.
    """
    y = np.asarray(y, dtype=float)
    if y.ndim != 2:
        raise ValueError(f"`y` must be one sequence (T, p); got shape {y.shape}.")
    if method not in ("approx", "exact"):
        raise ValueError(f'`method` must be "approx" or "exact"; got {method!r}.')
    T = y.shape[0]
    first = check_count("min_observations", min_observations)
    if first >= T:
        raise ValueError(f"`min_observations` must be below T = {T}; got {first}.")
    rows = [k for k in range(first, T) if not np.all(np.isnan(y[k]))]
    if not rows:
        raise ValueError(f"no row from `min_observations` = {first} on has an observed value.")
    settings = dict(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains)

    def refit(k: int) -> np.ndarray:
        """Pointwise log densities `(S, T)` at draws of p(theta | y_{1:k-1})."""
        past = y.copy()
        past[k:] = np.nan
        idata = fit_nuts(
            model, past, times, **settings, seed=seed + len(refits), model_kwargs=model_kwargs,
            progress=False, pointwise=False,
        )  # fmt: skip
        post = idata["posterior"]
        samples = {name: np.asarray(post[name].values) for name in post.data_vars}
        ll = pointwise_log_likelihood(model, samples, y, times, model_kwargs)
        refits.append(k)
        return ll.reshape(-1, T)

    refits: list[int] = []
    elpd, k_hats = [], []
    bar = progress_bar()(rows, desc=f"LFO ({method})", disable=not progress, leave=False)
    for k in bar:
        if not refits or method == "exact":
            ll, start, k_hat = refit(k), k, np.nan
        else:
            log_w, k_hat = psis(np.sum(ll[:, start:k], axis=1))
            if k_hat > k_threshold:
                ll, start, k_hat = refit(k), k, np.nan
        if start == k:
            log_w = np.full(ll.shape[0], -np.log(ll.shape[0]))
        elpd.append(float(logsumexp(log_w + ll[:, k])))
        k_hats.append(k_hat)
    pointwise = np.asarray(elpd)
    return LFOResult(
        elpd=float(pointwise.sum()),
        se=float(np.sqrt(len(pointwise) * np.var(pointwise))),
        pointwise=pointwise,
        rows=np.asarray(rows),
        times=np.asarray(times, dtype=float)[rows],
        pareto_k=np.asarray(k_hats, dtype=float),
        refits=tuple(refits),
        method=method,
    )
