"""What the command line reports: verdicts, tables, text and figures of a fit or a posterior.

Each function turns a result (an EM fit, a comparison of fits, NUTS draws, a forecast) into what
`sdessm fit`, `sdessm compare`, `sdessm sample` and `sdessm demo` print and write: notes
`(kind, text)` on how a fit ended, each with what to try; tables of estimates; the text of the
fitted SDE; the figures of the report.
NumPy, pandas, SciPy and the plotting modules are imported when a function needs them, so that
the command line answers bad arguments first.
"""

from __future__ import annotations

import argparse
import contextlib

#: The probability mass of the posterior intervals that `sdessm sample` and `sdessm demo` report.
HDI_PROB = 0.94

#: The general model that every model of sdessm is a case of, as the report shows it.
GENERAL_MODEL = (
    "x_1 ~ N(mu1, P1),   dx = F x dt + L dW  (Q = L L^T),   y_k = H x(t_k) + u + e_k,  "
    "e_k ~ N(0, R)"
)
#: What known inputs v add to `GENERAL_MODEL` (held constant between observation times).
DRIVEN_MODEL = "with known inputs v: dx = (F x + B v) dt + L dW,   y_k = H x(t_k) + u + D v_k + e_k"


def option_values(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, str]:
    """The options `names` of a run as the report lists them: `--name` -> its value, as text
    (a list as it is written on the command line, comma-separated)."""

    def text(value) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    return {f"--{n.replace('_', '-')}": text(getattr(args, n)) for n in names}


def model_summary(module) -> str:
    """The first line of a model module's docstring."""
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else "(no docstring)"


def model_facts(args, module) -> dict[str, str]:
    """The model a run used: its name or file, and the first line of its docstring."""
    return {"model": args.model, "summary": model_summary(module)}


def sde_text(sde) -> str:
    """The fitted SDE's matrices, as text."""
    import numpy as np

    with np.printoptions(precision=5, suppress=False, linewidth=90):
        parts = [
            f"{name} =\n{np.asarray(value)}"
            for name, value in (("F", sde.F), ("Q", sde.Q), ("H", sde.H), ("u", sde.u))
        ]
        parts.append(f"R =\n{np.asarray(sde.R)}")
        for name in ("B", "D"):  # the input gains of a driven model
            if getattr(sde, name, None) is not None:
                parts.append(f"{name} =\n{np.asarray(getattr(sde, name))}")
    model = GENERAL_MODEL
    if getattr(sde, "B", None) is not None or getattr(sde, "D", None) is not None:
        model += f"\n{DRIVEN_MODEL}"
    return model + "\n\n" + "\n".join(parts)


def identified_functional(module):
    """For a model identified only up to a change of state coordinates (F, L, H all free), the
    quantities to report instead of raw entries; None for a structured model."""
    if getattr(module, "EM_CLOSED_FORM", None) is None or not hasattr(module, "to_sde"):
        return None
    from .diagnostics import identifiable

    return lambda v: identifiable(module.to_sde(**v))  # noqa: E731


def identified_section(module, em) -> list:
    """For a model identified only up to a change of state coordinates, the report section of
    the quantities the data identify; nothing for a structured model."""
    import numpy as np

    functional = identified_functional(module)
    if functional is None:
        return []
    values = {
        k: str(np.round(np.asarray(v, dtype=float), 6).tolist())
        for k, v in functional(em.params).items()
    }
    text = (
        "This model is identified only up to a change of state coordinates: the raw entries "
        "of F, L and H are not comparable between fits. These quantities are."
    )
    return [("What the data identify", [text, values])]


def em_table(em):
    """Estimates with standard errors: `(table, standard errors, note)`; the note says why
    standard errors are undefined where they are."""
    import numpy as np
    import pandas as pd

    note = None
    try:
        se = em.standard_errors()
    except ValueError as err:
        se = {k: np.full(np.shape(v), np.nan) for k, v in em.params.items()}
        note = f"standard errors are undefined: {err}"
    rows = {}
    for k, v in em.params.items():
        for ix in np.ndindex(np.shape(v)):
            label = k + (f"[{','.join(map(str, ix))}]" if ix else "")
            rows[label] = {"estimate": float(np.asarray(v)[ix]), "se": float(np.asarray(se[k])[ix])}
    return pd.DataFrame(rows).T, se, note


def em_summary(em, loglik: str) -> str:
    """One line: EM's iterations and why it stopped, the log-likelihood, and the verdict."""
    polish = em.report.get("polish") or {}
    newton = f" + {polish['newton_iterations']} Newton" if polish.get("gain", 0.0) > 0 else ""
    verdict = "converged (a certified maximum)" if em.converged else "NOT converged (see below)"
    return f"{em.num_iters} EM{newton} iterations ({em.report['stopped']}); {loglik}; {verdict}"


def criteria_line(criteria: dict) -> str:
    """AIC, AICc and BIC in one line, with the counts they use."""
    c = criteria
    return (
        f"AIC {c['aic']:.6g}, AICc {c['aicc']:.6g}, BIC {c['bic']:.6g} ({c['parameters']} "
        f"identified parameters, {c['observations']} observed values)"
    )


def em_outcome(em, criteria: dict) -> dict[str, str]:
    """How an EM fit ended, as the report's table: the log-likelihood, the information criteria,
    the iterations, why EM stopped and what its convergence test found."""
    return {
        "log-likelihood": f"{em.log_likelihood:.10g}",
        "AIC, AICc, BIC": criteria_line(criteria),
        "EM iterations": str(em.num_iters),
        "EM stopped because": em.report["stopped"],
        "convergence": em.report.get("convergence", ""),
    }


def em_verdict(em, args, note, caught: list[str]) -> list[tuple[str, str]]:
    """`(kind, text)` notes on how the EM fit ended, each with what to try."""
    report = em.report
    stopped, convergence = report.get("stopped", ""), report.get("convergence", "")
    polish = report.get("polish") or {}
    finish = (
        f", then Newton steps on the exact log-likelihood gained {polish['gain']:.4g}"
        if polish.get("gain", 0.0) > 0
        else ""
    )
    history = f"EM ran {em.num_iters} iterations ({stopped}){finish}."
    notes = []
    boundary = report.get("boundary") or {}
    if em.converged:
        notes.append(("ok", f"Converged: {convergence}. {history}"))
    elif boundary:
        where = "; ".join(
            f"{name} = {value:.3g} (bound {bound:g})" for name, (value, bound) in boundary.items()
        )
        notes.append(
            (
                "warning",
                f"Not converged to an interior maximum: {where} sits at the edge of its range, "
                f"where the likelihood keeps rising. {history} The data do not support this "
                "part of the model: try a model without it, another start (--init NAME=VALUE), "
                "or --objective map (the prior keeps it away from the edge).",
            )
        )
    elif report.get("flat_direction"):
        notes.append(
            (
                "warning",
                f"Not converged: {convergence}. {history} Try a model with fewer free "
                "parameters, another start (--init NAME=VALUE), or --objective map (the priors "
                "then bound the flat directions).",
            )
        )
    else:
        notes.append(
            (
                "warning",
                f"Not converged: {convergence or stopped}. {history} Try more iterations "
                f"(--iters {4 * args.iters}), another start (--init NAME=VALUE), times in "
                "units that make the typical step near 1, or a simpler model.",
            )
        )
    if note and em.converged:  # otherwise the note above says it already
        notes.append(("warning", f"{note[0].upper()}{note[1:]}"))
    notes.extend(("warning", text) for text in caught)
    return notes


def candidate_line(candidate) -> str:
    """One line on a fit of `sdessm compare`: its log-likelihood, k, AIC and BIC, and whether it
    is certified, or why it failed."""
    c = candidate.criteria
    if candidate.failed:
        return f"FAILED: {candidate.convergence}"
    verdict = "certified" if candidate.converged else f"NOT certified ({candidate.convergence})"
    return (
        f"log-likelihood {c['log_likelihood']:.6g}, k = {c['parameters']}, AIC {c['aic']:.6g}, "
        f"BIC {c['bic']:.6g}; {verdict}"
    )


def comparison_notes(comparison) -> list[tuple[str, str]]:
    """The notes of a comparison, then the warnings of each fit (as information: a warning of a
    model not chosen does not make the run's result a warning, one of the chosen model does)."""
    notes = list(comparison.notes)
    for c in comparison.candidates:
        kind = "warning" if c.name == comparison.choice else "info"
        notes += [(kind, f"{c.name}: {text}") for text in c.warnings]
    return notes


def comparison_results(comparison, *, data, settings, versions) -> dict:
    """What comparison.json holds: the choice and why, one entry per model (the table's row, its
    convergence and warnings), the data, settings and versions."""
    rows = comparison.table().to_dict(orient="index")
    for c in comparison.candidates:
        rows[c.name].update(
            convergence=c.convergence,
            residuals_not_run=c.residuals_not_run,
            warnings=list(c.warnings),
            params=c.fit.params if c.fit is not None else None,
        )
    return {
        "choice": comparison.choice,
        "why": comparison.why,
        "notes": [{"kind": kind, "text": text} for kind, text in comparison.notes],
        "models": rows,
        "data": data,
        "settings": settings,
        "versions": versions,
    }


def em_history_csv(em) -> str:
    """One row per EM iterate: the log-likelihood, and the log-posterior for MAP."""
    posts = em.report.get("log_posteriors")
    header = "iteration,log_likelihood" + (",log_posterior" if posts is not None else "")
    rows = [
        f"{i},{float(ll)!r}" + (f",{float(posts[i])!r}" if posts is not None else "")
        for i, ll in enumerate(em.log_likelihoods)
    ]
    return "\n".join([header, *rows]) + "\n"


def smoothing_figures(times, y, names, sde, x_true=None, inputs=None) -> dict:
    """The data with the smoothed signal, and the smoothed latent states (with `x_true`, the
    truth, when known; `inputs`, those of a driven model): file name -> figure."""
    import numpy as np

    from .diagnostics import plot_smoothed_observations, plot_smoothed_states
    from .kalman import rts_smoother

    smoothed = rts_smoother(sde, y, times, inputs=inputs)
    direct = None  # what the inputs add to the observations directly, D v_k
    if getattr(sde, "D", None) is not None:
        direct = np.asarray(inputs, dtype=float) @ np.asarray(sde.D).T
    return {
        "smoothed_observations.png": plot_smoothed_observations(
            times, smoothed, y, sde, names=names, inputs=inputs
        ),
        "smoothed_states.png": plot_smoothed_states(
            times, smoothed, y, x_true, H=sde.H, u=sde.u, obs_names=names, direct=direct
        ),
    }


def residual_checks(sde, times, y, names, inputs=None):
    """`(table, saved, figure)` of the residual checks at the estimate: the p-values per column
    (a DataFrame), the same for params.json, and `plot_residuals`; `(a sentence saying why,
    {"not_run": why}, None)` when the data are too few to test."""
    import pandas as pd

    from .residuals import plot_residuals, residual_check

    standardized, tests, not_run = residual_check(sde, y, times, inputs)
    if tests is None:
        return f"Residual checks not run: {not_run}", {"not_run": not_run}, None
    lag = tests.lags[-1]
    table = pd.DataFrame(
        {
            f"Ljung-Box p (lags 1-{lag})": tests.ljung_box_p[:, -1],
            "Jarque-Bera p": tests.jarque_bera_p,
            "variance ratio, last/first third": tests.heteroskedasticity,
            "variance p": tests.heteroskedasticity_p,
        },
        index=list(names),
    )
    saved = {
        "lags": list(tests.lags),
        "columns": {
            name: {
                "ljung_box": tests.ljung_box[i].tolist(),
                "ljung_box_p": tests.ljung_box_p[i].tolist(),
                "jarque_bera": float(tests.jarque_bera[i]),
                "jarque_bera_p": float(tests.jarque_bera_p[i]),
                "heteroskedasticity": float(tests.heteroskedasticity[i]),
                "heteroskedasticity_p": float(tests.heteroskedasticity_p[i]),
            }
            for i, name in enumerate(names)
        },
    }
    return table, saved, plot_residuals(standardized, times, names)


def forecast_outputs(times, y, names, result) -> dict:
    """forecast.csv (95% bands per column, every number exact) and forecast.png."""
    import numpy as np

    from .diagnostics import plot_forecast
    from .forecast import bands

    band = bands(result, 0.95)
    header = ["t"] + [f"{name}_{stat}" for name in names for stat in band]
    columns = [np.asarray(result.times, dtype=float)]
    columns += [np.asarray(v[:, j], dtype=float) for j in range(len(names)) for v in band.values()]
    rows = [",".join(repr(float(c[i])) for c in columns) for i in range(len(columns[0]))]
    csv = "\n".join([",".join(header), *rows]) + "\n"
    return {"forecast.csv": csv, "forecast.png": plot_forecast(times, y, result, names=names)}


def display_table(table):
    """A recovery table with its interval columns named by their level."""
    level = f"{HDI_PROB:.0%}"
    return table.rename(columns={"hdi_low": f"{level} HDI low", "hdi_high": f"{level} HDI high"})


def nuts_verdict(idata, table, chains: int) -> list[tuple[str, str]]:
    """`(kind, text)` notes on the sampler's diagnostics, each with what to try."""
    import numpy as np

    notes = []
    r_hats, esses = np.asarray(table["r_hat"], float), np.asarray(table["ess_bulk"], float)
    r_hat = float(np.max(r_hats)) if chains > 1 and np.isfinite(r_hats).all() else np.nan
    ess = float(np.min(esses)) if np.isfinite(esses).all() else np.nan
    diverging = 0
    with contextlib.suppress(KeyError, TypeError):
        diverging = int(np.asarray(idata["sample_stats"]["diverging"]).sum())
    if chains < 2:
        notes.append(
            (
                "warning",
                "one chain: R-hat cannot compare chains, so mixing is unchecked; run --chains 4.",
            )
        )
    elif not np.isfinite(r_hat):
        notes.append(("warning", "R-hat is undefined for some quantity (a chain did not move)."))
    if r_hat > 1.01:
        notes.append(
            (
                "warning",
                f"the chains disagree (largest R-hat {r_hat:.3f} > 1.01): run longer (--warmup, "
                "--draws) or start from EM (--init-from-em).",
            )
        )
    if ess < 100 * chains:
        notes.append(
            (
                "warning",
                f"few effective draws (smallest bulk ESS {ess:.0f} < 100 per chain): run more "
                "--draws.",
            )
        )
    if diverging:
        notes.append(
            (
                "warning",
                f"{diverging} divergent transitions: the sampler met curvature it could not "
                "follow and the posterior may be biased; raise --target-accept (e.g. 0.95).",
            )
        )
    if not notes:
        notes.append(
            (
                "ok",
                f"The {chains} chains agree (largest R-hat {r_hat:.3f} <= 1.01), the smallest "
                f"bulk ESS is {ess:.0f}, and no transition diverged.",
            )
        )
    return notes


def loo_facts(idata) -> dict[str, str]:
    """PSIS-LOO of a posterior on its pointwise log-likelihood (ArviZ 0.x or 1.x), in words for
    the report: elpd_loo and its standard error, the effective number of parameters, and at how
    many observations the Pareto k passes 0.7; or why it was not computed."""
    import warnings

    import arviz as az
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the facts below say what ArviZ's warnings say
        try:
            loo = az.loo(idata, pointwise=True)
        except (ValueError, TypeError, KeyError) as err:
            return {"PSIS-LOO": f"not computed: {err}"}
    elpd = loo.elpd_loo if hasattr(loo, "elpd_loo") else loo.elpd  # ArviZ 0.x, 1.x
    p = loo.p_loo if hasattr(loo, "p_loo") else loo.p
    k = np.asarray(loo.pareto_k, dtype=float).ravel()
    return {
        "elpd_loo": f"{float(elpd):.6g} (se {float(loo.se):.3g})",
        "p_loo (effective parameters)": f"{float(p):.3g}",
        "Pareto k above 0.7": f"{int(np.sum(k > 0.7))} of {k.size} observations",
        "reading": "the expected log predictive density of each observation time with it left "
        "out; an approximation on a time series (later observations stay in), where "
        "sdessm.leave_future_out scores forecasts from the past alone; compare models with "
        "az.compare on their posterior.nc",
    }


def coverage_note(table) -> str:
    """Plain words on truths outside their intervals, and how often that happens by chance."""
    from scipy.stats import binom

    known = table["truth_in_hdi"].dropna()
    outside = [name for name, inside in known.items() if not inside]
    level = f"{HDI_PROB:.0%}"
    if not outside:
        return f"Every truth lies inside its {level} HDI."
    n, k = len(known), len(outside)
    listed = ", ".join(
        f"{name} (truth {table.loc[name, 'truth']:.4g}, HDI [{table.loc[name, 'hdi_low']:.4g}, "
        f"{table.loc[name, 'hdi_high']:.4g}])"
        for name in outside
    )
    chance = float(binom.sf(k - 1, n, 1.0 - HDI_PROB))
    text = (
        f"The truth lies outside its {level} HDI for {listed}. A {level} interval misses its "
        f"truth in {1 - HDI_PROB:.0%} of data sets; with {n} quantities, {k} or more misses "
        f"happen by chance in about {chance:.1%} of data sets if the misses were independent "
        "(correlated estimates miss together, which makes several misses more likely). "
    )
    if chance >= 0.05:
        text += "This is what an honest posterior looks like on some data sets."
    else:
        text += (
            "This many misses is unusual: check the chains' diagnostics, the length of the "
            "record, and whether the priors suit the scale of the data."
        )
    em_inside = [name for name in outside if table.loc[name, "em_in_hdi"]]
    if em_inside:
        text += (
            f" The EM estimate lies inside the interval too for {', '.join(em_inside)}: there "
            "the data set itself points away from the truth."
        )
    return text
