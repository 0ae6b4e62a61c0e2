r"""Diagnostics of parameter recovery: truth vs EM vs posterior, in tables and pictures.

`recovery_table` compares, per quantity, the truth, the EM estimate and the NUTS posterior (mean,
sd, HDI, R-hat, bulk and tail ESS). For a structured model the quantities are its named sites;
for a model identified only up to a change of state coordinates (F, L, H all free) pass
`functional=lambda v: identifiable(to_sde(**v))`, which compares what the data identify:
the eigenvalues of F, the observation autocovariance $C(\tau) = H e^{F\tau} P_\infty H^\top$,
u and R. Works with ArviZ 0.x (`InferenceData`) and 1.x (`DataTree`).

Every plot returns a matplotlib `Figure` that is not attached to pyplot (save it with
`fig.savefig`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from ._checks import float64
from .discretize import stationary_covariance
from .forecast import PosteriorForecast, bands
from .io import posterior_draws
from .kalman import SmootherResult
from .params import SDEParams
from .results import EMResult


def _smoothed_moments(smoothed: SmootherResult, H=None, u=None):
    """`(means, sds)`, each `(T, n)`: of one sequence's smoothed states (n = d), or of the
    signal $H x + u$ (n = p) when `H` and `u` are given."""
    means = np.asarray(smoothed.smoothed_means)
    if means.ndim != 2:
        raise ValueError(f"`smoothed` must hold one sequence ((T, d) means); got {means.shape}.")
    covs = np.asarray(smoothed.smoothed_covs)
    if H is not None:
        means = means @ H.T + u
        covs = np.einsum("pi,tij,qj->tpq", H, covs, H)
    return means, np.sqrt(np.clip(np.diagonal(covs, axis1=-2, axis2=-1), 0, None))


def _band_panels(times, means, sds, level: float, names, what: str):
    """A figure with one panel per column of `means`: the curve and its `level` normal band."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + level / 2)
    n = means.shape[1]
    fig = Figure(figsize=(10, 2.6 * n), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        low, high = means[:, i] - z * sds[:, i], means[:, i] + z * sds[:, i]
        ax.fill_between(
            times, low, high, color="tab:blue", alpha=0.25, lw=0, label=f"{what}, {level:.0%} band"
        )
        ax.plot(times, means[:, i], color="tab:blue", lw=1.5, label=what)
        ax.set_ylabel(names[i])
    axes[-1].set_xlabel("time")
    return fig, axes


def plot_smoothed_states(
    times,
    smoothed: SmootherResult,
    y=None,
    x_true=None,
    *,
    H=None,
    u=None,
    level: float = 0.95,
    state_names=None,
    obs_names=None,
    direct=None,
) -> Figure:
    """One panel per state: smoothed mean with a `level` band, the true path, and the data.

    Args:
        times (ArrayLike): `(T,)` observation times.
        smoothed: an `rts_smoother` result for one sequence.
        y (ArrayLike | None): `(T, p)` observations (NaN = missing), drawn on the panel of each
            state that `H` reads directly (a row of `H` with a single non-zero entry equal
            to 1), less the offset `u` when it is given.
        x_true (ArrayLike | None): `(T, d)` true states, for simulated data.
        H (ArrayLike | None): the observation matrix that says which states the data show.
        u (ArrayLike | None): `(p,)` observation offset, subtracted from the data drawn.
        level: coverage of the band (normal quantiles).
        direct (ArrayLike | None): `(T, p)` what known inputs add to the observations
            directly, `D v_k`, subtracted from the data drawn too.
        state_names (Sequence[str] | None): labels of the states.
        obs_names (Sequence[str] | None): labels of the data columns.

    Returns:
        A matplotlib `Figure` (not attached to pyplot; save it with `fig.savefig`).
    """
    times = np.asarray(times)
    means, sd = _smoothed_moments(smoothed)
    names = state_names or [f"x[{i}]" for i in range(means.shape[1])]
    fig, axes = _band_panels(times, means, sd, level, names, "smoothed mean")
    for i, ax in enumerate(axes):
        if x_true is not None:
            ax.plot(times, np.asarray(x_true)[:, i], color="k", lw=1, ls="--", label="true state")
        if y is not None and H is not None:
            Hn = np.asarray(H)
            for j in range(Hn.shape[0]):
                row = Hn[j]
                if np.count_nonzero(row) == 1 and row[i] == 1.0:
                    label = obs_names[j] if obs_names is not None else f"y[{j}]"
                    offset = 0.0 if u is None else float(np.asarray(u)[j])
                    shown = f"{label} - u" if offset else label
                    if direct is not None:
                        offset = offset + np.asarray(direct)[:, j]
                        shown = f"{label} - u - D v"
                    ax.plot(
                        times,
                        np.asarray(y)[:, j] - offset,
                        ".",
                        color="tab:red",
                        ms=3,
                        label=f"observed {shown}",
                    )
        ax.legend(loc="upper right", fontsize="small", ncols=4)
    return fig


def plot_smoothed_observations(
    times, smoothed: SmootherResult, y, sde, *, level: float = 0.95, names=None, inputs=None
) -> Figure:
    r"""One panel per data column: the data and the smoothed signal $H m_k + u$ (plus $D v_k$
    with known inputs) with a `level` band (of $H P_k H^\top$, the signal without observation
    noise).

    Args:
        times (ArrayLike): `(T,)` observation times.
        smoothed: an `rts_smoother` result for one sequence.
        y (ArrayLike): `(T, p)` observations (NaN = missing).
        sde (SDEParams | LGSSMParams): the parameters smoothed with (shared emissions `H`, `u`).
        level: coverage of the band (normal quantiles).
        names (Sequence[str] | None): labels of the columns (default `y[j]`).
        inputs (ArrayLike | None): `(T, m)` known inputs, for parameters with a gain `D`.

    Returns:
        A matplotlib `Figure` (not attached to pyplot; save it with `fig.savefig`).
    """
    times, y = np.asarray(times), np.asarray(y)
    H, u = np.asarray(sde.H), np.asarray(sde.u)
    if H.ndim != 2:
        raise ValueError("`sde` must have shared emissions: H of shape (p, d).")
    if getattr(sde, "D", None) is not None:
        if inputs is None:
            raise ValueError("`sde` has an input gain `D`: give the known `inputs` (T, m).")
        u = u + np.asarray(inputs, dtype=float) @ np.asarray(sde.D).T  # (T, p)
    signal, sd = _smoothed_moments(smoothed, H, u)
    names = list(names) if names is not None else [f"y[{j}]" for j in range(H.shape[0])]
    fig, axes = _band_panels(times, signal, sd, level, names, "smoothed signal")
    for j, ax in enumerate(axes):
        ax.plot(times, y[:, j], ".", color="tab:red", ms=3, label="data")
        ax.legend(loc="upper right", fontsize="small", ncols=3)
    return fig


# --------------------------------------------------------------------------- quantities


def identifiable(sde: SDEParams, lags: Sequence[float] = (0.0, 1.0)) -> dict:
    r"""Functionals of an `SDEParams` that do not change under $x \to T x$.

    Returns a dict of arrays: `"Re eig F"` (real parts, ascending), `"|Im eig F|"` (descending),
    `"C(tau=...)"` the stationary observation autocovariance $H e^{F\tau} P_\infty H^\top$
    (without R) at each lag (a stable F is assumed), `"u"`, and `"R"`. A complex pair shows its
    real part and frequency twice. Jittable and vmappable.
    """
    F, Q = sde.F, sde.L @ sde.L.T
    eig = jnp.linalg.eigvals(F)
    out = {"Re eig F": jnp.sort(eig.real), "|Im eig F|": -jnp.sort(-jnp.abs(eig.imag))}
    P_inf = stationary_covariance(F, Q)
    for lag in lags:
        C = sde.H @ jax.scipy.linalg.expm(F * lag) @ P_inf @ sde.H.T
        out[f"C(tau={lag:g})"] = C
    out["u"], out["R"] = sde.u, sde.R
    return out


def _flatten(values: dict, trailing: int = 0) -> dict[str, np.ndarray]:
    """name -> its scalar entries `name[i,j]`; the last `trailing` axes (draws) are kept."""
    out = {}
    for name, v in values.items():
        v = np.asarray(v)
        shape = v.shape[: v.ndim - trailing]
        if not shape:
            out[name] = v
        for ix in np.ndindex(shape) if shape else ():
            out[f"{name}[{','.join(map(str, ix))}]"] = v[ix]
    return out


def _attached(idata, attr: str):
    text = idata["posterior"].attrs.get(attr)
    return None if text is None else json.loads(text)


def _site_values(x) -> dict | None:
    if x is None or isinstance(x, dict):
        return x
    if isinstance(x, EMResult):
        if not isinstance(x.params, dict):
            raise ValueError("`em` must be the EMResult of `fit_em(model, ...)` (site values).")
        return x.params
    raise TypeError(f"expected a dict of site values or an EMResult; got {type(x).__name__}.")


def _hdi(flat: np.ndarray, prob: float) -> tuple[float, float]:
    import arviz as az

    key = "prob" if "prob" in inspect.signature(az.hdi).parameters else "hdi_prob"
    low, high = np.asarray(az.hdi(flat, **{key: prob})).reshape(2)
    return float(low), float(high)


def _draw_quantities(draws: dict, functional: Callable | None) -> dict[str, np.ndarray]:
    """Flattened quantities, each `(chain, draw)`."""
    chains, n = next(iter(draws.values())).shape[:2]
    if functional is not None:
        stacked = {k: jnp.asarray(v.reshape((chains * n,) + v.shape[2:])) for k, v in draws.items()}
        with jax.numpy_dtype_promotion("standard"):
            values = jax.jit(jax.vmap(functional))(stacked)
        draws = {k: np.reshape(v, (chains, n) + np.shape(v)[1:]) for k, v in values.items()}
    moved = {k: np.moveaxis(np.asarray(v), (0, 1), (-2, -1)) for k, v in draws.items()}
    return _flatten(moved, trailing=2)


def _point_quantities(values: dict | None, functional: Callable | None) -> dict:
    if values is None:
        return {}
    if functional is not None:
        with jax.numpy_dtype_promotion("standard"):
            values = functional({k: jnp.asarray(v, dtype=float) for k, v in values.items()})
    return {k: float(v) for k, v in _flatten(values).items()}


@float64
def recovery_table(
    idata,
    em=None,
    truth: dict | None = None,
    *,
    functional: Callable | None = None,
    hdi_prob: float = 0.94,
):
    """Per quantity: truth, EM estimate, posterior mean, sd, HDI, R-hat, ESS, and coverage.

    Args:
        idata (InferenceData | DataTree): the ArviZ data of `fit_nuts` (or any with a posterior
            group of the model's sites).
        em (EMResult | dict | None): the EM estimate (an `EMResult` of `fit_em(model, ...)` or
            a dict of site values); by default the one `fit_nuts` attached.
        truth: the true site values of simulated data; by default the ones attached.
        functional: maps a dict of site values to a dict of quantities to compare (e.g.
            `lambda v: identifiable(module.to_sde(**v))`); by default the sites themselves.
        hdi_prob: the probability of the highest-density interval.

    Returns:
        (pandas.DataFrame): indexed by quantity, with columns `truth`, `em`, `mean`, `sd`,
            `hdi_low`, `hdi_high`, `r_hat`, `ess_bulk`, `ess_tail`, `truth_in_hdi`, `em_in_hdi`
            (NaN / None where there is no truth or no EM estimate).
    """
    import arviz as az
    import pandas as pd

    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"`hdi_prob` must lie in (0, 1); got {hdi_prob}.")
    em = _site_values(em) if em is not None else _attached(idata, "sdessm_em")
    truth = _site_values(truth) if truth is not None else _attached(idata, "sdessm_truth")
    draws = posterior_draws(idata)
    for what, values in (("em", em), ("truth", truth)):
        if values is not None and set(values) - set(draws):
            raise ValueError(
                f"`{what}` names sites {sorted(set(values) - set(draws))} that the posterior "
                f"does not have (it has {sorted(draws)})."
            )
    if functional is not None:
        draws = {k: v for k, v in draws.items() if k in (em or truth or draws)}
    quantities = _draw_quantities(draws, functional)
    em_q, truth_q = _point_quantities(em, functional), _point_quantities(truth, functional)
    rows = []
    for name, x in quantities.items():
        x = np.asarray(x, dtype=float)
        if np.ptp(x) == 0.0:  # a constant of the model (e.g. u = 0): nothing to diagnose
            continue
        low, high = _hdi(x.ravel(), hdi_prob)
        t, e = truth_q.get(name, np.nan), em_q.get(name, np.nan)
        rows.append(
            dict(
                quantity=name,
                truth=t,
                em=e,
                mean=float(x.mean()),
                sd=float(x.std(ddof=1)),
                hdi_low=low,
                hdi_high=high,
                r_hat=float(az.rhat(x)),
                ess_bulk=float(az.ess(x, method="bulk")),
                ess_tail=float(az.ess(x, method="tail", prob=(0.05, 0.95))),
                truth_in_hdi=None if np.isnan(t) else bool(low <= t <= high),
                em_in_hdi=None if np.isnan(e) else bool(low <= e <= high),
            )
        )
    return pd.DataFrame(rows).set_index("quantity")


# --------------------------------------------------------------------------- plots


def plot_forecast(
    times,
    y,
    result,
    *,
    level: float = 0.95,
    names: Sequence[str] | None = None,
    last: int | None = None,
) -> Figure:
    """One panel per observed series: the data, then the forecast mean and its `level` band.

    Args:
        times (ArrayLike): `(T,)` observation times.
        y (ArrayLike): `(T, p)` observations (NaN = missing).
        result (Forecast | PosteriorForecast): a `Forecast` (exact Gaussian band at fixed
            parameters) or a `PosteriorForecast`
            (posterior predictive band and median, with a few of the drawn paths).
        level: coverage of the band.
        names: labels of the series.
        last: show only the last `last` observations (default: all).

    Returns:
        A matplotlib `Figure` (not attached to pyplot; save it with `fig.savefig`).
    """
    band = bands(result, level)
    times, y = np.asarray(times), np.asarray(y)
    if last is not None:
        times, y = times[-last:], y[-last:]
    future = np.asarray(result.times)
    p = band["mean"].shape[1]
    names = list(names) if names is not None else [f"y[{j}]" for j in range(p)]
    posterior = isinstance(result, PosteriorForecast)
    fig = Figure(figsize=(10, 2.6 * p), layout="constrained")
    axes = fig.subplots(p, 1, sharex=True, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        ax.plot(times, y[:, j], ".", color="tab:red", ms=3, label="data")
        what = "posterior predictive" if posterior else "forecast"
        ax.fill_between(
            future,
            band["lower"][:, j],
            band["upper"][:, j],
            color="tab:blue",
            alpha=0.25,
            lw=0,
            label=f"{what} {level:.0%} band",
        )
        centre = band["median"] if posterior else band["mean"]
        ax.plot(
            future,
            centre[:, j],
            color="tab:blue",
            lw=1.5,
            label=f"{what} {'median' if posterior else 'mean'}",
        )
        if posterior:
            paths = np.asarray(result.obs_draws)[:: max(1, len(result.obs_draws) // 5)][:5]
            ax.plot(future, paths[:, :, j].T, color="tab:blue", lw=0.5, alpha=0.5)
        ax.axvline(times[-1], color="k", lw=0.8, ls=":")
        ax.set_ylabel(names[j])
        ax.legend(loc="upper left", fontsize="small", ncols=3)
    axes[-1].set_xlabel("time")
    return fig


def plot_em_history(result) -> Figure:
    """EM's progress: the objective per iteration (left; it never falls), and its distance below
    the final value on a log scale (right), which shows the late iterations that the left panel
    flattens: a straight descent is linear convergence, a plateau a stall."""
    lls = np.asarray(result.log_likelihoods, dtype=float)
    posts = result.report.get("log_posteriors")
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax, gap_ax = fig.subplots(1, 2)
    curves = [("log-likelihood", lls, "tab:blue")]
    if posts is not None:
        curves.append(("log-posterior", np.asarray(posts, dtype=float), "tab:orange"))
    for label, values, colour in curves:
        its = np.arange(values.size)
        ax.plot(its, values, ".-", color=colour, label=label)
        gap = values[-1] - values[:-1]
        keep = gap > 0
        if keep.any():
            gap_ax.semilogy(its[:-1][keep], gap[keep], ".-", color=colour, label=label)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("objective")
    ax.legend(fontsize="small")
    gap_ax.set_xlabel("EM iteration")
    gap_ax.set_ylabel("final value - value")
    if gap_ax.lines:
        gap_ax.legend(fontsize="small")
    else:
        gap_ax.text(
            0.5, 0.5, "no iteration before the last", ha="center", transform=gap_ax.transAxes
        )
    stopped = result.report.get("stopped", "")
    fig.suptitle(f"EM: {result.num_iters} iterations, {stopped}", fontsize="medium")
    return fig


def plot_recovery(table) -> Figure:
    """Forest plot of a `recovery_table`: posterior mean and HDI per quantity, truth and EM marked.

    One row per quantity, each on its own scale (quantities differ in units).
    """
    n = len(table)
    fig = Figure(figsize=(7, 0.55 * n + 0.8), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (name, row) in zip(axes, table.iterrows(), strict=True):
        ax.hlines(0, row["hdi_low"], row["hdi_high"], color="tab:blue", lw=3, label="HDI")
        ax.plot(row["mean"], 0, "o", color="tab:blue", label="posterior mean")
        if not np.isnan(row["truth"]):
            ax.plot(row["truth"], 0, "x", color="k", ms=9, mew=2, label="truth")
        if not np.isnan(row["em"]):
            ax.plot(row["em"], 0, "D", color="tab:orange", ms=6, mfc="none", mew=1.5, label="EM")
        ax.set_yticks([0], [name])
        ax.tick_params(axis="x", labelsize="small")
        ax.spines[["top", "right", "left"]].set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=4, fontsize="small")
    return fig


def plot_trace_rank(idata, var_names: Sequence[str] | None = None, bins: int = 20) -> Figure:
    """Per scalar quantity: the trace of each chain (left) and its rank histogram (right).

    Rank histograms of well-mixed chains are flat (Vehtari et al. 2021); a chain that sits in
    one region shows as a sloped or humped histogram.
    """
    draws = posterior_draws(idata)
    if var_names is not None:
        draws = {k: draws[k] for k in var_names}
    quantities = _draw_quantities(draws, None)
    n = len(quantities)
    fig = Figure(figsize=(10, 1.8 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=[3, 1])
    for (name, x), (ax_t, ax_r) in zip(quantities.items(), axes, strict=True):
        x = np.asarray(x)
        chains, m = x.shape
        ranks = np.argsort(np.argsort(x.ravel())).reshape(x.shape)
        edges = np.linspace(0, x.size, bins + 1)
        for c in range(chains):
            ax_t.plot(x[c], lw=0.5, alpha=0.8)
            ax_r.stairs(np.histogram(ranks[c], edges)[0], edges, lw=1.2, baseline=None)
        ax_r.axhline(m / bins, color="k", ls=":", lw=1)
        ax_t.set_ylabel(name)
        ax_r.set_yticks([])
    axes[0, 0].set_title("trace per chain", fontsize="medium")
    axes[0, 1].set_title("rank histogram per chain", fontsize="medium")
    axes[-1, 0].set_xlabel("draw")
    axes[-1, 1].set_xlabel("rank (all chains)")
    return fig
