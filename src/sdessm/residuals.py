r"""One-step-ahead innovations: the filter's prediction errors, and the same whitened.

With $\hat y_k = H_k m_k^- + u_k$ and $S_k = H_k P_k^- H_k^\top + R_k$ the mean and covariance of
$y_k$ given $y_{1:k-1}$ (the filter's predicted state moments $m_k^-, P_k^-$), the innovation is
$e_k = y_k - \hat y_k$ and the standardised innovation is $w_k = C_k^{-1} e_k$ with $C_k$ the
lower Cholesky factor of $S_k$ over the entries observed at step $k$ (in their column order:
$w_{k,1} = e_{k,1} / \sqrt{S_{k,11}}$, $w_{k,2}$ the part of $e_{k,2}$ that $e_{k,1}$ does not
predict, scaled, and so on). Under the model, the $w_{k,i}$ of all observed entries are exactly
independent N(0, 1): stacked in time order they are $C^{-1} (y - \mathrm{E}\,y)$ with $C$ the
lower Cholesky factor of the joint covariance of the observed entries (the prediction-error
decomposition of the likelihood). Their log densities,
$\log p(y_k \mid y_{1:k-1}) = -\tfrac12 (n_k \log 2\pi + \log\det S_k + w_k^\top w_k)$ over the
$n_k$ observed entries, sum to the log-likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, ArrayLike, Float

from ._checks import float64
from .kalman import filter_sequence, run
from .params import LGSSMParams, SDEParams
from .problem import resolve
from .recursion import decoupled


class Innovations(NamedTuple):
    r"""Output of `innovations`; with `B` sequences every field gains a leading `B` axis.

    `standardized[k]` is $w_k$ and `innovations[k]` is $e_k$ (NaN where $y_k$ is missing),
    `covariances[k]` is $S_k$ over all columns, `log_densities[k]` is
    $\log p(y_k \mid y_{1:k-1})$ over the observed entries (0 for a row with none).
    """

    standardized: Float[Array, "*B T p"]
    innovations: Float[Array, "*B T p"]
    covariances: Float[Array, "*B T p p"]
    log_densities: Float[Array, "*B T"]


@float64
def innovations(
    params: LGSSMParams | SDEParams,
    y: Float[ArrayLike, "*B T p"],
    times: Float[ArrayLike, "*#B T"] | None = None,
    *,
    dt: float | None = None,
    inputs: Float[ArrayLike, "*#B T m"] | None = None,
) -> Innovations:
    r"""One-step-ahead innovations of `y` under `params`, raw and standardised (module docstring).

    Residual checks of a fitted model (serial correlation, normality, constant variance) read
    `standardized`: i.i.d. N(0, 1) when the model is right.

    Args:
        params: an `LGSSMParams`, or an `SDEParams` with `times` or `dt` (as `kalman_filter`).
        y: observations `(T, p)` or `(B, T, p)`; NaN marks a missing value.
        times: observation times `(T,)` or `(B, T)`; `SDEParams` only.
        dt: a uniform step instead of `times`; `SDEParams` only.
        inputs: known inputs `(T, m)` or `(B, T, m)` of a model with `B`/`D` (as
            `kalman_filter`); the innovations are those of the data themselves.

    Returns:
        An `Innovations`.

    Raises:
        ValueError: an argument has a wrong shape or value (as `kalman_filter`).

    Examples:
        >>> import jax.numpy as jnp, sdessm
        >>> rw = sdessm.SDEParams(F=jnp.zeros((1, 1)), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        ...                       R=jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1))
        >>> res = sdessm.innovations(rw, jnp.array([[2.0], [jnp.nan]]), dt=1.0)
        >>> [round(w, 6) for w in res.standardized[:, 0].tolist()]  # y_1 = 2 vs N(0, P1 + R)
        [1.414214, nan]
    """
    problem = resolve(params, y, times, dt, inputs)  # discretised once, for the filter and here
    filtered = run(filter_sequence, problem)
    discrete, y = problem.params, problem.y
    m, P = filtered.predicted_means, filtered.predicted_covs
    lead = m.shape[:-1]  # (*B, T); H, u, R are shared or one per step (T leading)
    H, u, R = (
        jnp.broadcast_to(x, lead + x.shape[x.ndim - n :])
        for x, n in ((discrete.H, 2), (discrete.u, 1), (discrete.R, 2))
    )
    predicted = jnp.einsum("...pd,...d->...p", H, m) + u
    S = H @ P @ jnp.swapaxes(H, -1, -2) + R
    S = 0.5 * (S + jnp.swapaxes(S, -1, -2))
    observed = ~jnp.isnan(y)
    e = jnp.where(observed, y - predicted, 0.0)
    # the observed block of S, the identity on the missing entries
    C = jnp.linalg.cholesky(decoupled(S, observed))
    w = solve_triangular(C, e[..., None], lower=True)[..., 0]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(C, axis1=-2, axis2=-1)), axis=-1)
    n = jnp.sum(observed, axis=-1).astype(S.dtype)
    log_densities = -0.5 * (n * jnp.log(2.0 * jnp.pi) + log_det + jnp.sum(w**2, axis=-1))
    nan = jnp.asarray(jnp.nan, dtype=S.dtype)
    return Innovations(jnp.where(observed, w, nan), jnp.where(observed, e, nan), S, log_densities)


class ResidualTests(NamedTuple):
    """Output of `residual_tests`: one row per observed column, p-values beside statistics.

    `ljung_box[i, j]` is the Ljung-Box statistic of column i up to lag `lags[j]`;
    `heteroskedasticity[i]` is the ratio of the sums of squares of the last and first thirds.
    """

    lags: tuple[int, ...]
    ljung_box: np.ndarray  # (p, len(lags))
    ljung_box_p: np.ndarray
    jarque_bera: np.ndarray  # (p,)
    jarque_bera_p: np.ndarray
    heteroskedasticity: np.ndarray  # (p,)
    heteroskedasticity_p: np.ndarray


def _autocorrelations(w, max_lag: int):
    """`(r, pairs, centred)` of standardised innovations `w` `(B, T, p)`: the autocorrelation
    of each column at lags 1..max_lag `(p, max_lag)` (products of deviations from the mean
    within a sequence, over the sum of squares), the number of observed pairs at each lag, and
    the deviations (0 where missing)."""
    observed = ~np.isnan(w)
    centred = np.where(observed, w - np.nanmean(w, axis=(0, 1)), 0.0)
    squares = np.sum(centred**2, axis=(0, 1))
    lags = range(1, max_lag + 1)
    r = np.stack([np.sum(centred[:, k:] * centred[:, :-k], axis=(0, 1)) for k in lags], -1)
    pairs = np.stack([np.sum(observed[:, k:] & observed[:, :-k], axis=(0, 1)) for k in lags], -1)
    return r / squares[:, None], pairs, centred


def residual_tests(
    standardized: Float[ArrayLike, "*B T p"], lags: int | Sequence[int] | None = None
) -> ResidualTests:
    r"""Tests that standardised innovations are white noise, one column at a time.

    - **Ljung-Box** (serial correlation) up to each lag h of `lags`:
      $Q_h = n (n + 2) \sum_{k \le h} r_k^2 / m_k$ against $\chi^2_h$, with $r_k$ the sample
      autocorrelation at lag k (products of deviations from the mean over the sum of squares),
      n the number of observed values and $m_k$ the number of observed pairs k steps apart
      within a sequence ($n - k$ for one complete sequence, Ljung and Box's form; with gaps,
      $m_k$ keeps each term's null variance at one).
    - **Jarque-Bera** (normality): $n/6\,(S^2 + (K - 3)^2 / 4)$ against $\chi^2_2$, from the
      sample skewness S and kurtosis K of the observed values.
    - **Heteroskedasticity** (a variance that changes over time; Harvey 1990, section 5.4):
      $H = \sum w^2$ over the last third of the steps over $\sum w^2$ over the first third
      (h = round(T / 3) steps of each sequence), against $F$ with the numbers of observed
      values as degrees of freedom (scaled by their ratio), two-sided.

    On one complete sequence these are statsmodels' `acorr_ljungbox`, `jarque_bera` and
    `breakvar_heteroskedasticity_test` (what its state-space results' `test_serial_correlation`,
    `test_normality` and `test_heteroskedasticity` report); the tests check the numbers.

    Args:
        standardized: `innovations(...).standardized`, `(T, p)` or `(B, T, p)`, NaN where
            missing.
        lags: the lags h (an int: 1..h); default 1..min(10, T // 5).

    Returns:
        A `ResidualTests`.

    Raises:
        ValueError: `standardized` is not 2-D or 3-D, a column has fewer than 4 observed
            values, or a lag is not between 1 and T - 1.
    """
    import scipy.stats  # imported by the residual checks only

    w = np.asarray(standardized, dtype=float)
    if w.ndim not in (2, 3):
        raise ValueError(f"`standardized` must be (T, p) or (B, T, p); got shape {w.shape}.")
    w = w if w.ndim == 3 else w[None]
    T, p = w.shape[1:]
    if lags is None:
        lags = max(1, min(10, T // 5))
    lags = tuple(range(1, int(lags) + 1)) if np.ndim(lags) == 0 else tuple(int(k) for k in lags)
    if not lags or min(lags) < 1 or max(lags) > T - 1:
        raise ValueError(f"`lags` must lie between 1 and T - 1 = {T - 1}; got {lags}.")
    observed = ~np.isnan(w)
    counts = observed.sum(axis=(0, 1))
    if counts.min() < 4:
        raise ValueError(
            f"column {int(counts.argmin())} of `standardized` has {int(counts.min())} observed "
            "values; the residual tests need 4 at least."
        )
    r, pairs, centred = _autocorrelations(w, max(lags))
    terms = r**2 / np.maximum(pairs, 1)  # m_k = n - k for one complete sequence
    ljung_box = (counts[:, None] * (counts[:, None] + 2) * np.cumsum(terms, axis=-1))[
        :, np.asarray(lags) - 1
    ]
    ljung_box_p = scipy.stats.chi2.sf(ljung_box, np.asarray(lags))

    m2, m3, m4 = (np.sum(centred**k, axis=(0, 1)) / counts for k in (2, 3, 4))
    skew, kurtosis = m3 / m2**1.5, m4 / m2**2
    jarque_bera = counts / 6.0 * (skew**2 + (kurtosis - 3.0) ** 2 / 4.0)
    jarque_bera_p = scipy.stats.chi2.sf(jarque_bera, 2)

    h = int(np.round(T / 3))
    squares = np.where(observed, w**2, 0.0)
    late, early = np.sum(squares[:, -h:], axis=(0, 1)), np.sum(squares[:, :h], axis=(0, 1))
    dof_late, dof_early = observed[:, -h:].sum(axis=(0, 1)), observed[:, :h].sum(axis=(0, 1))
    ratio = late / early
    scaled = ratio * dof_early / dof_late
    tails = np.minimum(
        scipy.stats.f.cdf(scaled, dof_late, dof_early),
        scipy.stats.f.sf(scaled, dof_late, dof_early),
    )
    return ResidualTests(
        lags, ljung_box, ljung_box_p, jarque_bera, jarque_bera_p, ratio, 2.0 * tails
    )


class ResidualCheck(NamedTuple):
    """Output of `residual_check`: the standardised innovations `(T, p)`, their tests, and why
    the tests were not run (None when they were)."""

    standardized: np.ndarray
    tests: ResidualTests | None
    not_run: str | None


def residual_check(sde, y, times, inputs=None) -> ResidualCheck:
    """The residual checks of a fit at its estimate `sde`: `residual_tests` of the standardised
    innovations, or the reason they cannot run (too few observed values).

    Args:
        sde (SDEParams): the fitted parameters (`EMResult.sde`).
        y (ArrayLike): the data, `(T, p)` or `(B, T, p)`, NaN where missing.
        times (ArrayLike): the observation times.
        inputs (ArrayLike | None): the known inputs of a model with input gains.

    Returns:
        A `ResidualCheck`.
    """
    standardized = np.asarray(innovations(sde, y, times, inputs=inputs).standardized)
    try:
        return ResidualCheck(standardized, residual_tests(standardized), None)
    except ValueError as err:
        return ResidualCheck(standardized, None, str(err))


def residual_pvalues(tests: ResidualTests | None) -> dict[str, float]:
    """The smallest p-value over the columns of each check (Ljung-Box up to the largest lag of
    `tests`, Jarque-Bera, heteroskedasticity); NaN for each when `tests` is None."""
    if tests is None:
        return dict.fromkeys(("ljung_box_p", "jarque_bera_p", "heteroskedasticity_p"), np.nan)
    return {
        "ljung_box_p": float(np.min(tests.ljung_box_p[:, -1])),
        "jarque_bera_p": float(np.min(tests.jarque_bera_p)),
        "heteroskedasticity_p": float(np.min(tests.heteroskedasticity_p)),
    }


def plot_residuals(standardized, times=None, names=None, lags: int = 20):
    """Residual checks in pictures, one row per column of `standardized` (`(T, p)`, or
    `(B, T, p)` pooled): the standardised innovations over time with the 95% band of N(0, 1),
    their histogram with the N(0, 1) density, a normal Q-Q plot, and the autocorrelation up to
    `lags` with the 95% band of white noise. The titles give `residual_tests`' p-values.
    Returns a matplotlib `Figure`, not attached to pyplot."""
    import scipy.stats
    from matplotlib.figure import Figure

    w = np.asarray(standardized, dtype=float)
    w = w if w.ndim == 3 else w[None]
    T, p = w.shape[1:]
    times = np.arange(T) if times is None else np.asarray(times, dtype=float)
    names = [f"y[{i}]" for i in range(p)] if names is None else list(names)
    lags = max(1, min(int(lags), T - 1))
    tests = residual_tests(w, lags=[lags])
    r = _autocorrelations(w, lags)[0]
    fig = Figure(figsize=(12, 2.8 * p), layout="constrained")
    axes = fig.subplots(p, 4, squeeze=False)
    grid = np.linspace(-4, 4, 200)
    for i, (series, hist, qq, acf) in enumerate(axes):
        column = w[..., i]
        values = column[~np.isnan(column)]
        for sequence in column:
            series.plot(times.reshape(-1, T)[0], sequence, ".", ms=2, color="tab:blue")
        for level in (-1.96, 1.96):
            series.axhline(level, color="grey", lw=0.8, ls="--")
        series.set_ylabel(names[i])
        series.set_xlabel("time")
        series.set_title("standardised innovations", fontsize="small")
        hist.hist(values, bins="auto", density=True, color="tab:blue", alpha=0.6)
        hist.plot(grid, scipy.stats.norm.pdf(grid), color="black", lw=1, label="N(0, 1)")
        hist.set_title(f"normality: Jarque-Bera p = {tests.jarque_bera_p[i]:.3g}", fontsize="small")
        hist.legend(fontsize="small")
        ordered = np.sort(values)
        expected = scipy.stats.norm.ppf((np.arange(1, ordered.size + 1) - 0.5) / ordered.size)
        qq.plot(expected, ordered, ".", ms=2, color="tab:blue")
        qq.plot(expected, expected, color="black", lw=1)
        qq.set_xlabel("normal quantile")
        qq.set_title(
            f"variance, last / first third: {tests.heteroskedasticity[i]:.3g}, "
            f"p = {tests.heteroskedasticity_p[i]:.3g}",
            fontsize="small",
        )
        acf.bar(np.arange(1, lags + 1), r[i], color="tab:blue", width=0.6)
        band = 1.96 / np.sqrt(values.size)
        acf.axhspan(-band, band, color="grey", alpha=0.2, lw=0)
        acf.axhline(0.0, color="black", lw=0.8)
        acf.set_xlabel("lag")
        acf.set_title(
            f"autocorrelation: Ljung-Box({lags}) p = {tests.ljung_box_p[i, 0]:.3g}",
            fontsize="small",
        )
    return fig
