r"""Model comparison by EM: fit each candidate, tabulate its information criteria and residual
checks, and choose a model, saying why in plain words.

Each candidate, a NumPyro model with its keyword arguments, is fitted by `sdessm.fit_em` and
read by `EMResult.information_criteria()` (the log-likelihood $\ell$, the number k of identified
parameters and n of observed values, AIC, AICc, BIC) and by the residual checks of its
standardised one-step-ahead errors (`sdessm.residuals.residual_check`: Ljung-Box,
Jarque-Bera, a change of variance). The choice (`choose`) is the lowest BIC among the fits
certified as a maximum (`EMResult.converged`). A fit that failed or is not certified stays in
the table with its reason and is chosen only when no fit is certified (and then with a
warning). BIC differences read on the scale of Kass and Raftery (1995): below 2 the data do not
tell two models apart, 2 to 6 is positive, 6 to 10 strong and above 10 very strong evidence.
BIC charges $\log n$ per parameter and AIC 2, so AIC prefers larger models more often; the notes
say when the two disagree.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Sequence

import numpy as np

from .fit import fit_em
from .residuals import residual_check, residual_pvalues
from .results import EMResult

#: The level of the residual checks: a p-value below it is a failed check.
RESIDUAL_LEVEL = 0.05
#: BIC differences at which the evidence for the better model is positive, strong, very strong
#: (Kass and Raftery 1995); below the first the data do not tell the models apart.
BIC_EVIDENCE = ((2.0, "positive"), (6.0, "strong"), (10.0, "very strong"))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One model of a comparison: how its fit ended, or why there is none.

    Attributes:
        name: the model's name in the table.
        criteria: `EMResult.information_criteria()` of the fit (empty when it failed).
        converged: whether the fit is a certified maximum (`EMResult.converged`).
        convergence: the certificate, or why there is none (`report["convergence"]`), or why
            the fit failed.
        failed: whether the fit raised an error (then `convergence` holds it).
        residuals: `residual_pvalues` of the fit's residual checks.
        residuals_not_run: why the residual checks did not run, or None.
        warnings: the warnings the fit raised, one line each.
        fit: the `EMResult`, None when the fit failed.
        posterior: the ArviZ data of NUTS on the model, when `compare_models` sampled it.
    """

    name: str
    criteria: dict
    converged: bool
    convergence: str
    failed: bool = False
    residuals: dict = dataclasses.field(default_factory=lambda: residual_pvalues(None))
    residuals_not_run: str | None = None
    warnings: tuple[str, ...] = ()
    fit: EMResult | None = dataclasses.field(default=None, repr=False)
    posterior: object = dataclasses.field(default=None, repr=False)


def fit_candidate(
    model, y, times, *, name: str, objective: str = "mle", model_kwargs=None, **fit_kwargs
) -> Candidate:
    """Fit one model by `fit_em` and read its criteria and residual checks; an error of the fit
    (no SDE explains it, a computation that left the valid region, data the model cannot take)
    is kept as the candidate's reason, and its warnings as lines.

    Args:
        model (Callable): a NumPyro model `model(times, y=None, **model_kwargs)`.
        y (ArrayLike): the data.
        times (ArrayLike): the observation times.
        name (str): the model's name in the table.
        objective (str): `"mle"` or `"map"` (`fit_em`).
        model_kwargs (dict | None): keyword arguments of the model (its orders, say).
        **fit_kwargs (Any): further arguments of `fit_em` (`num_iters`, `tol`, `psd`,
            `progress`...).

    Returns:
        A `Candidate`.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            em = fit_em(
                model, y, times, objective=objective, model_kwargs=model_kwargs, **fit_kwargs
            )
            criteria = em.information_criteria()
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
            text = " ".join(str(err).split()) or type(err).__name__
            return Candidate(name, {}, False, f"failed: {text}", True, warnings=_lines(caught))
        check = residual_check(em.sde, y, times) if em.sde is not None else None
    return Candidate(
        name,
        criteria,
        bool(em.converged),
        str(em.report.get("convergence", "")),
        residuals=residual_pvalues(check.tests if check else None),
        residuals_not_run=check.not_run if check else "no SDE to filter with",
        warnings=_lines(caught),
        fit=em,
    )


def _lines(caught) -> tuple[str, ...]:
    """The recorded warnings as lines, once each, without deprecations."""
    lines = []
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in lines and not issubclass(w.category, DeprecationWarning | FutureWarning):
            lines.append(text)
    return tuple(lines)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What `compare_models` returns: the candidates, the choice and why.

    Attributes:
        candidates: one `Candidate` per model, in the order given.
        choice: the name of the chosen model, None when no fit ended.
        notes: `(kind, text)` sentences: `"ok"` the choice and why, `"info"` what qualifies it
            (AIC disagrees, BIC does not tell two models apart, fits left out), `"warning"` what
            should worry a user (no certified fit, residual checks failed, with what to try).
        loo: `az.compare` of the sampled models (pandas, indexed by name), None when none was.
    """

    candidates: tuple[Candidate, ...]
    choice: str | None
    notes: tuple[tuple[str, str], ...]
    loo: object = None

    @property
    def why(self) -> str:
        """The notes as one paragraph."""
        return " ".join(text for _, text in self.notes)

    @property
    def fits(self) -> dict[str, EMResult | None]:
        """Name -> `EMResult` (None for a fit that failed)."""
        return {c.name: c.fit for c in self.candidates}

    def table(self):
        """One row per model (pandas `DataFrame`, indexed by name): `log_likelihood`, `k`, `n`,
        `aic`, `aicc`, `bic`, `delta_aic` and `delta_bic` (from the lowest among the certified
        fits, or among all fits when none is certified), `converged`, the smallest residual
        p-values (`ljung_box_p`, `jarque_bera_p`, `heteroskedasticity_p`), `chosen`, and `note`
        (why a fit failed or is not certified)."""
        import pandas as pd

        keys = {"log_likelihood": "log_likelihood", "k": "parameters", "n": "observations"}
        keys |= {k: k for k in ("aic", "aicc", "bic")}
        rows = {
            c.name: {k: c.criteria.get(v, np.nan) for k, v in keys.items()} for c in self.candidates
        }
        table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
        certified = [c.converged for c in self.candidates]
        pool = table[certified] if any(certified) else table
        for name in ("aic", "bic"):
            table[f"delta_{name}"] = table[name] - pool[name].min()
        table["converged"] = certified
        for key in residual_pvalues(None):
            table[key] = [c.residuals[key] for c in self.candidates]
        table["chosen"] = [c.name == self.choice for c in self.candidates]
        table["note"] = ["" if c.converged else c.convergence for c in self.candidates]
        if self.loo is not None:
            for column, name in (
                ("elpd_loo", "elpd"),
                ("elpd_loo_se", "se"),
                ("loo_weight", "weight"),
            ):
                table[column] = self.loo[name].reindex(table.index)
        return table


def _name(model, kwargs) -> str:
    """A model's default name: its module's last part (or its own name in a script), with its
    keyword arguments, e.g. `carma(p=3, q=0)`."""
    module = inspect.getmodule(model)
    base = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
    base = model.__name__ if base in ("", "__main__") else base
    args = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())
    return f"{base}({args})" if args else base


def _model_and_kwargs(item) -> tuple:
    """`(model function, model kwargs)` of an item of `models`."""
    model, kwargs = item if isinstance(item, tuple) else (item, None)
    model = getattr(model, "model", model) if inspect.ismodule(model) else model
    if not callable(model) or (kwargs is not None and not isinstance(kwargs, dict)):
        raise ValueError(
            "each of `models` must be a NumPyro model, a model module (a zoo model) or a pair "
            f"(model, model_kwargs dict); got {item!r}."
        )
    return model, kwargs


def compare_models(
    models: Sequence,
    y,
    times,
    *,
    names: Sequence[str] | None = None,
    objective: str = "mle",
    nuts: dict | None = None,
    **fit_kwargs,
) -> Comparison:
    """Fit each model by `fit_em` and choose one: the lowest BIC among the certified fits.

    With `nuts`, each certified fit is also sampled by NUTS (`fit_nuts`, started at its EM
    estimate) and the posteriors compared by PSIS-LOO (`az.compare` on the pointwise
    log-likelihood): `elpd_loo`, its standard error and the stacking weight join the table, and
    a note says which model LOO ranks first. LOO is an approximation on a time series;
    `sdessm.leave_future_out` is the Bayesian comparison to trust for forecasting.

    Args:
        models (Sequence): NumPyro models `model(times, y=None, **model_kwargs)`, model modules
            (`sdessm.models.load("ou")`), or pairs `(model or module, model_kwargs)`, e.g.
            `(carma, {"p": 3, "q": 0})`.
        y (ArrayLike): the data, `(T, p)` or `(B, T, p)`, NaN where missing.
        times (ArrayLike): the observation times.
        names (Sequence[str] | None): the models' names in the table; by default the module's
            name with the keyword arguments (`carma(p=3, q=0)`).
        objective (str): `"mle"` or `"map"` for every fit (the criteria use the log-likelihood
            at the estimate either way).
        nuts (dict | None): settings of `fit_nuts` for every sampled model (`num_warmup`,
            `num_samples`, `num_chains`, `seed`, `target_accept_prob`); `{}` for its
            defaults; None samples nothing.
        **fit_kwargs (Any): further arguments of `fit_em` for every fit (`num_iters`, `tol`, `psd`,
            `progress`...).

    Returns:
        A `Comparison`: `table()`, `choice`, `notes` and `why`.

    Raises:
        ValueError: no model, a model that is none of the above, names that are not one per
            model or repeat, or `model_kwargs` among `fit_kwargs` (give them per model).

    Examples:
        A fit takes seconds (most of it compiling), so this one is not run here:

        >>> ou, carma = sdessm.load_model("ou"), sdessm.load_model("carma")  # doctest: +SKIP
        >>> pair = [ou, (carma, {"p": 2, "q": 0})]  # OU against CARMA(2, 0)  # doctest: +SKIP
        >>> result = sdessm.compare_models(pair, y, times)  # doctest: +SKIP
        >>> print(result.choice, result.why)  # doctest: +SKIP
        >>> result.table()  # doctest: +SKIP
    """
    if "model_kwargs" in fit_kwargs:
        raise ValueError("give the keyword arguments of each model as a pair (model, kwargs).")
    specs = [_model_and_kwargs(item) for item in models]
    if not specs:
        raise ValueError("`models` is empty: give the models to compare.")
    names = [_name(*spec) for spec in specs] if names is None else [str(n) for n in names]
    if len(names) != len(specs) or len(set(names)) != len(names):
        raise ValueError(f"`names` must name each of the {len(specs)} models once; got {names}.")
    candidates = [
        fit_candidate(
            model, y, times, name=name, objective=objective, model_kwargs=kw, **fit_kwargs
        )
        for (model, kw), name in zip(specs, names, strict=True)
    ]
    if nuts is None:
        return choose(candidates)
    candidates = [
        dataclasses.replace(c, posterior=sample_candidate(c, model, y, times, kw, nuts))
        if c.converged
        else c
        for c, (model, kw) in zip(candidates, specs, strict=True)
    ]
    return choose(candidates, loo=loo_comparison(candidates))


def sample_candidate(candidate: Candidate, model, y, times, model_kwargs, nuts: dict):
    """NUTS on one fitted model, its chains started at the EM estimate (`fit_nuts`)."""
    from .infer import fit_nuts

    settings = {"progress": False, **nuts}
    return fit_nuts(model, y, times, init=candidate.fit, model_kwargs=model_kwargs, **settings)


def loo_comparison(candidates: Sequence[Candidate]):
    """`az.compare` of the sampled candidates, with the columns `elpd`, `se` and `weight` under
    these names whatever the ArviZ version (0.x calls the first `elpd_loo`); None when fewer
    than one was sampled."""
    sampled = {c.name: c.posterior for c in candidates if c.posterior is not None}
    if not sampled:
        return None
    import arviz as az

    table = az.compare(sampled)
    return table.rename(columns={"elpd_loo": "elpd"})


def _evidence(difference: float) -> str:
    """The strength of evidence of a BIC difference, in words (`BIC_EVIDENCE`)."""
    words = "not distinguishable"
    for bound, word in BIC_EVIDENCE:
        if difference >= bound:
            words = f"{word} evidence"
    return words


def choose(candidates: Sequence[Candidate], loo=None) -> Comparison:
    """The choice among `candidates` and why (module docstring): the lowest BIC among the
    certified fits, or among all fits that ended when none is certified.

    Args:
        candidates (Sequence[Candidate]): the fitted models (`fit_candidate`).
        loo (pandas.DataFrame | None): `loo_comparison` of the sampled candidates, for a note.

    Returns:
        A `Comparison`.

    Examples:
        >>> def fitted(name, bic, k, converged=True):
        ...     criteria = {"aic": bic - 3.0 * k, "bic": bic, "parameters": k, "observations": 100}
        ...     return Candidate(name, criteria, converged, "certified" if converged else "flat")
        >>> result = choose([fitted("ou", 150.0, 4), fitted("carma:2", 151.0, 5),
        ...                  fitted("carma:3", 140.0, 7, converged=False)])
        >>> result.choice, result.notes[0][1].split(";")[0]
        ('ou', 'Chosen: ou, the lowest BIC (150) of the 2 fits certified as a maximum')
    """
    candidates = tuple(candidates)
    ended = [c for c in candidates if not c.failed and np.isfinite(c.criteria.get("bic", np.nan))]
    pool = [c for c in ended if c.converged] or ended
    if not pool:
        reasons = "; ".join(f"{c.name}: {c.convergence}" for c in candidates)
        return Comparison(
            candidates, None, (("warning", f"No model could be fitted ({reasons})."),)
        )
    ranked = sorted(pool, key=lambda c: c.criteria["bic"])
    best = ranked[0]
    notes = [_choice_note(ranked, certified=best.converged)]
    by_aic = min(pool, key=lambda c: c.criteria["aic"])
    if by_aic is not best:
        gap = best.criteria["aic"] - by_aic.criteria["aic"]
        n = best.criteria["observations"]
        notes.append(
            (
                "info",
                f"AIC disagrees: it prefers {by_aic.name} (AIC lower by {gap:.3g}). AIC charges 2 "
                f"per parameter and BIC log n = {np.log(n):.3g}, so AIC leans to the larger "
                "model; BIC's choice is the more conservative, AIC's may forecast better.",
            )
        )
    notes += _residual_notes(best)
    left_out = [c for c in candidates if c not in pool]
    if left_out:
        listed = "; ".join(f"{c.name} ({c.convergence})" for c in left_out)
        notes.append(("info", f"Not considered for the choice: {listed}."))
    if loo is not None:
        notes.append(_loo_note(loo, best.name))
    return Comparison(candidates, best.name, tuple(notes), loo)


def _loo_note(loo, choice: str) -> tuple[str, str]:
    """What PSIS-LOO says of the sampled models, next to the choice by BIC."""
    first = loo.index[0]
    elpd, se = loo.loc[first, "elpd"], loo.loc[first, "se"]
    text = (
        f"PSIS-LOO over the {len(loo)} sampled models ranks {first} first (elpd_loo "
        f"{elpd:.6g} +- {se:.2g}, stacking weight {loo.loc[first, 'weight']:.2f})"
    )
    if first != choice:
        text += f", not {choice}: the two criteria disagree"
    text += (
        ". LOO is an approximation on a time series; sdessm.leave_future_out scores forecasts "
        "of each observation from the past alone."
    )
    return ("info", text)


def _choice_note(ranked: list[Candidate], certified: bool) -> tuple[str, str]:
    """The sentence of the choice: the chosen model, its BIC, and the evidence against the
    runner-up."""
    best = ranked[0]
    bic = best.criteria["bic"]
    if not certified:
        return (
            "warning",
            f"No fit is certified as a maximum: {best.name} is chosen provisionally, the lowest "
            f"BIC ({bic:.6g}) of the fits that ended, but the criteria of a fit that is not at "
            "a maximum are not comparable. Try more iterations, other starts, or simpler models.",
        )
    if len(ranked) == 1:
        return ("ok", f"Chosen: {best.name}, the only fit certified as a maximum (BIC {bic:.6g}).")
    runner = ranked[1]
    gap = runner.criteria["bic"] - bic
    text = (
        f"Chosen: {best.name}, the lowest BIC ({bic:.6g}) of the {len(ranked)} fits certified as "
        f"a maximum; the next, {runner.name}, has BIC higher by {gap:.3g}: "
    )
    if gap >= BIC_EVIDENCE[0][0]:
        return ("ok", text + f"{_evidence(gap)} for {best.name}.")
    simpler = min(ranked[:2], key=lambda c: c.criteria["parameters"])
    k = ", ".join(f"k = {c.criteria['parameters']} for {c.name}" for c in ranked[:2])
    return (
        "ok",
        text + f"less than {BIC_EVIDENCE[0][0]:g}, so the two are not distinguishable by BIC "
        f"({k}); {simpler.name}, with fewer parameters, is as good a choice.",
    )


def _residual_notes(best: Candidate) -> list[tuple[str, str]]:
    """Notes on the residual checks of the chosen model: what fails at `RESIDUAL_LEVEL`, and
    what to try."""
    if best.residuals_not_run:
        return [
            ("info", f"The residual checks of {best.name} did not run: {best.residuals_not_run}")
        ]
    p = best.residuals
    advice = {
        "ljung_box_p": "serial correlation is left in the errors (Ljung-Box p = {:.3g}): the "
        "model misses dynamics; try one with more states (a higher CARMA order, an oscillation)",
        "jarque_bera_p": "the errors are not normal (Jarque-Bera p = {:.3g}): look for outliers, "
        "or transform the data (a logarithm or a square root of a positive series)",
        "heteroskedasticity_p": "the variance of the errors changes over the record (p = {:.3g}): "
        "transform the data (a logarithm or a square root steadies a variance that grows with "
        "the level), or fit parts of the record apart",
    }
    failed = [text.format(p[key]) for key, text in advice.items() if p[key] < RESIDUAL_LEVEL]
    if not failed:
        return [("info", f"The residual checks of {best.name} pass at {RESIDUAL_LEVEL:.0%}.")]
    level = f"{RESIDUAL_LEVEL:.0%}"
    return [("warning", f"The residuals of {best.name} fail at {level}: {'; '.join(failed)}.")]


def plot_comparison(comparison: Comparison):
    """Bars of delta-AIC and delta-BIC per model (from the best certified fit), the chosen model
    in green, fits that are not certified hatched in grey, failed fits marked; the dashed line
    at 2 is where BIC starts to tell models apart. Returns a matplotlib `Figure`, not attached
    to pyplot."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    table = comparison.table()
    names = list(table.index)
    fig = Figure(figsize=(10, 0.5 * len(names) + 1.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    rows = np.arange(len(names))
    for ax, column in zip(axes, ("delta_aic", "delta_bic"), strict=True):
        values = np.nan_to_num(table[column].to_numpy(dtype=float), nan=0.0)
        for i, (_, row) in enumerate(table.iterrows()):
            colour = "tab:green" if row["chosen"] else "tab:blue" if row["converged"] else "grey"
            hatch = None if row["converged"] else "//"
            ax.barh(i, values[i], color=colour, hatch=hatch, alpha=0.8)
            if np.isnan(row[column]) or row["chosen"]:
                label = " chosen" if row["chosen"] else " failed"
                ax.text(0.0, i, label, va="center", fontsize="small")
        ax.axvline(0.0, color="black", lw=0.8)
        label = "Δ" + column.removeprefix("delta_").upper()
        ax.set_xlabel(label)
        ax.set_title(f"{label} from the best certified fit: lower is better", fontsize="small")
    line = axes[1].axvline(2.0, color="grey", lw=0.8, ls="--", label="2: BIC tells models apart")
    legend = [Patch(color="tab:green", label="chosen"), Patch(color="tab:blue", label="certified")]
    legend += [Patch(facecolor="grey", hatch="//", label="not certified")]
    axes[1].legend(handles=[*legend, line], fontsize="small")
    axes[0].set_yticks(rows, names)
    axes[0].invert_yaxis()
    return fig
