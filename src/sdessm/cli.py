"""The `sdessm` command line: simulate, fit (EM), sample (NUTS), demo, models, data.

Every command checks its arguments, its model, its data and its output path before any work. A
user error (a bad option, a missing file, data no fit can use, an output path that holds what
the user owns) prints one line and exits with status 2; a computation that fails prints one line
and exits with status 1. Results are written whole or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from pathlib import Path

EXIT_USAGE, EXIT_FAILED, EXIT_WARNINGS = 2, 1, 3


class _Failed(Exception):
    """A computation that failed (not the user's input): exit status 1."""


# --------------------------------------------------------------------------- argument types


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _positive(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _site_values(text: str) -> dict[str, float | list[float]]:
    """`name=value,...`; a vector site as `name=[v1,v2]` (each a finite number)."""
    import re

    pairs = re.findall(r"\s*([A-Za-z_]\w*)\s*=\s*(\[[^\]]*\]|[^,\[\]]+)\s*(?:,|$)", text)
    rebuilt = ",".join(f"{name}={value}" for name, value in pairs)
    if not pairs or rebuilt.replace(" ", "") != text.replace(" ", ""):
        raise argparse.ArgumentTypeError(
            f"must be name=value pairs separated by commas, e.g. theta=0.5,u=1 or omega=[1,2]; "
            f"got {text!r}"
        )
    out: dict[str, float | list[float]] = {}
    for name, value in pairs:
        if name in out:
            raise argparse.ArgumentTypeError(f"names {name!r} twice")
        items = value.strip("[]").split(",") if value.startswith("[") else [value]
        numbers = []
        for item in items:
            number = _number(item.strip())
            if not math.isfinite(number):
                raise argparse.ArgumentTypeError(f"{name} must be finite, got {item.strip()}")
            numbers.append(number)
        out[name] = numbers if value.startswith("[") else numbers[0]
    return out


# --------------------------------------------------------------------------- shared steps


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"sdessm: error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def _load_model(args: argparse.Namespace, needs: tuple[str, ...] = ()):
    """The model module named by `--model`; `needs` are the attributes this command uses."""
    from .models import load

    module = load(args.model)
    missing = [name for name in needs if not hasattr(module, name)]
    if missing:
        raise ValueError(
            f"`sdessm {args.command}` needs {' and '.join(missing)} in the model file "
            f"{args.model} (default parameter values and the map to SDEParams: see "
            "'Write your own model' in the documentation)."
        )
    return module


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files this run reads or keeps, which its output must never replace."""
    files = [getattr(args, "data", None), getattr(args, "checkpoint", None)]
    model = getattr(args, "model", "")
    if model.endswith(".py") or os.sep in model or "/" in model:
        files.append(model)
    return [f for f in files if f]


def _check_out(args: argparse.Namespace, kind: str = "folder") -> None:
    """Refuse, before any work, an `--out` that would destroy what the user owns, or that cannot
    be written."""
    import tempfile

    from .io import check_output

    check_output(args.out, kind=kind, inputs=_inputs(args), force=args.force)
    parent = Path(args.out).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(f"cannot write --out {args.out}: {err.strerror or err}") from None


def _read_data(args: argparse.Namespace):
    """`(times, y, names)` from the CSV file, checked for data no fit can use."""
    from .io import check_data, read_csv

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    times, y, names = read_csv(args.data, args.time_column, columns)
    check_data(times, y, names, args.data)
    return times, y, names


@contextlib.contextmanager
def _recorded_warnings():
    """Collect the warnings of a computation (printed and reported afterwards, once each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _warning_lines(caught) -> list[str]:
    lines = []
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in lines and not issubclass(w.category, DeprecationWarning | FutureWarning):
            lines.append(text)
    return lines


def _future_times(times, n: int):
    """`n` times after the data, spaced by the data's median step (to 12 significant digits, so
    that round-off in the steps of decimal times does not show)."""
    import numpy as np

    from .io import decimal_grid

    if len(times) < 2:
        raise ValueError("--forecast needs at least two observation times to set its step.")
    step = float(f"{float(np.median(np.diff(times))):.12g}")
    return decimal_grid(float(times[-1]), step, n, first=1)


def _write_results(args, files: dict, title: str, sections: list) -> None:
    """Write `files` (name -> str, Figure or ArviZ data) and report.html into `--out` at once."""
    from . import report
    from .io import OutputMoved, atomic_folder

    try:
        with atomic_folder(args.out, force=args.force) as folder:
            for name, content in files.items():
                if isinstance(content, str):
                    (folder / name).write_text(content)
                elif hasattr(content, "savefig"):
                    content.savefig(folder / name, dpi=110)
                else:
                    content.to_netcdf(str(folder / name))
            report.write(folder / "report.html", title, sections)
    except OutputMoved as moved:
        print(f"sdessm: warning: {moved}", file=sys.stderr)
        args.out = str(moved.path)
    except OSError as err:
        raise _Failed(f"cannot write --out {args.out}: {err.strerror or err}") from None
    names = [*files, "report.html"]
    print(f"wrote {args.out}/: {', '.join(names)}")


def _settings(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, str]:
    return {f"--{n.replace('_', '-')}": str(getattr(args, n)) for n in names}


def _model_facts(args, module) -> dict[str, str]:
    doc = (module.__doc__ or "").strip()
    return {"model": args.model, "summary": doc.splitlines()[0] if doc else "(no docstring)"}


_GENERAL_MODEL = (
    "x_1 ~ N(mu1, P1),   dx = F x dt + L dW  (Q = L L^T),   y_k = H x(t_k) + u + e_k,  "
    "e_k ~ N(0, R)"
)


def _sde_text(sde) -> str:
    """The fitted SDE's matrices, as text."""
    import numpy as np

    with np.printoptions(precision=5, suppress=False, linewidth=90):
        parts = [
            f"{name} =\n{np.asarray(value)}"
            for name, value in (("F", sde.F), ("Q", sde.Q), ("H", sde.H), ("u", sde.u))
        ]
        parts.append(f"R =\n{np.asarray(sde.R)}")
    return _GENERAL_MODEL + "\n\n" + "\n".join(parts)


def _identified_functional(module):
    """For a model identified only up to a change of state coordinates (F, L, H all free), the
    quantities to report instead of raw entries; None for a structured model."""
    if getattr(module, "EM_CLOSED_FORM", None) is None or not hasattr(module, "to_sde"):
        return None
    from .diagnostics import identifiable

    return lambda v: identifiable(module.to_sde(**v))  # noqa: E731


# --------------------------------------------------------------------------- EM


def _fit_em(args, module, times, y, objective: str, init=None):
    """EM with its warnings recorded: `(result, warning lines)`."""
    from .errors import NoRealLogarithmError, NotPSDError
    from .fit import fit_em

    with _recorded_warnings() as caught:
        try:
            em = fit_em(
                module.model,
                y,
                times,
                objective=objective,
                init=init,
                num_iters=args.iters,
                psd=args.psd,
                checkpoint=getattr(args, "checkpoint", None),
            )
        except FloatingPointError as err:
            raise _Failed(f"EM failed: {err}") from None
        except NotPSDError:
            raise _Failed(
                "the diffusion Q recovered from the fit is not positive semi-definite: no SDE "
                "of this model fits the data at this step. Try --psd nearest (the nearest PSD "
                "Q, flagged in the results), or a model with fewer states."
            ) from None
        except NoRealLogarithmError as err:
            raise _Failed(f"no SDE explains the fit: {err}") from None
    return em, _warning_lines(caught)


def _em_table(em):
    """Estimates with standard errors: `(table, note)`; the note says why standard errors are
    undefined where they are."""
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


def _em_summary(em, loglik: str) -> str:
    """One line: EM's iterations and why it stopped, the log-likelihood, and the verdict."""
    polish = em.report.get("polish") or {}
    newton = f" + {polish['newton_iterations']} Newton" if polish.get("gain", 0.0) > 0 else ""
    verdict = "converged (a certified maximum)" if em.converged else "NOT converged (see below)"
    return f"{em.num_iters} EM{newton} iterations ({em.report['stopped']}); {loglik}; {verdict}"


def _em_verdict(em, args, note, caught: list[str]) -> list[tuple[str, str]]:
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


def _identified_section(module, em) -> list:
    """For a model identified only up to a change of state coordinates, the report section of
    the quantities the data identify; nothing for a structured model."""
    import numpy as np

    functional = _identified_functional(module)
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


def _smoothing_figures(times, y, names, sde, x_true=None) -> dict:
    from .diagnostics import plot_smoothed_observations, plot_smoothed_states
    from .kalman import rts_smoother

    smoothed = rts_smoother(sde, y, times)
    return {
        "smoothed_observations.png": plot_smoothed_observations(
            times, smoothed, y, sde, names=names
        ),
        "smoothed_states.png": plot_smoothed_states(
            times, smoothed, y, x_true, H=sde.H, u=sde.u, obs_names=names
        ),
    }


def _residual_checks(sde, times, y, names):
    """`(table, saved, figure)` of the residual checks at the estimate: the p-values per column
    (a DataFrame), the same for params.json, and `plot_residuals`; `(a sentence saying why,
    {"not_run": why}, None)` when the data are too few to test."""
    import pandas as pd

    from .residuals import innovations, plot_residuals, residual_tests

    standardized = innovations(sde, y, times).standardized
    try:
        tests = residual_tests(standardized)
    except ValueError as err:
        return f"Residual checks not run: {err}", {"not_run": str(err)}, None
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


def fit_command(args: argparse.Namespace) -> int:
    """EM on data from a CSV file."""
    from .diagnostics import plot_em_history
    from .forecast import forecast
    from .io import describe_data, json_text
    from .report import Note, Pre, versions

    module = _load_model(args)
    times, y, names = _read_data(args)
    _check_out(args)
    future = _future_times(times, args.forecast) if args.forecast else None
    print(f"EM ({args.objective}) of {args.model} on {len(times)} rows of {names}", flush=True)
    em, caught = _fit_em(args, module, times, y, args.objective, init=args.init)
    table, se, note = _em_table(em)
    notes = _em_verdict(em, args, note, caught)
    ll = em.log_likelihood
    criteria = em.information_criteria()
    print(_em_summary(em, f"log-likelihood {ll:.6g}"))
    print(_criteria_line(criteria))
    print(table.to_string(float_format=lambda v: f"{v:.5g}", na_rep="-"))
    _print_warnings(notes)

    figures = {**_smoothing_figures(times, y, names, em.sde), "em_history.png": plot_em_history(em)}
    checks, checks_saved, checks_figure = _residual_checks(em.sde, times, y, names)
    if checks_figure is not None:
        figures["residuals.png"] = checks_figure
    forecast_files, forecast_section = {}, []
    if future is not None:
        forecast_files = _forecast_outputs(times, y, names, forecast(em.sde, y, times, future))
        forecast_section = [
            ("Forecast at the EM estimate (95% band)", forecast_files["forecast.png"])
        ]
    data = {"file": args.data, **describe_data(times, y, names)}
    options = ("model", "objective", "iters", "psd", "time_column", "columns", "forecast")
    settings = _settings(args, (*options, "checkpoint"))
    results = {
        "model": args.model,
        "data": data,
        "settings": settings,
        "objective": args.objective,
        "params": em.params,
        "standard_errors": se,
        "standard_errors_note": note,
        "log_likelihood": ll,
        "information_criteria": criteria,
        "residual_tests": checks_saved,
        "converged": em.converged,
        "convergence": em.report.get("convergence"),
        "gradient_norm": em.report.get("gradient_norm"),
        "predicted_gain": em.report.get("predicted_gain"),
        "boundary": em.report.get("boundary"),
        "stopped": em.report["stopped"],
        "iterations": em.num_iters,
        "warnings": [text for kind, text in notes if kind != "ok"],
        "versions": versions(),
    }
    outcome = {"log-likelihood": f"{ll:.10g}", "AIC, AICc, BIC": _criteria_line(criteria)}
    outcome["EM iterations"] = str(em.num_iters)
    outcome["EM stopped because"] = em.report["stopped"]
    outcome["convergence"] = em.report.get("convergence", "")
    _write_results(
        args,
        {
            "params.json": json_text(results),
            "em_history.csv": _em_history_csv(em),
            **figures,
            **forecast_files,
        },
        f"sdessm fit: {args.model} on {args.data}",
        [
            ("Result", [*(Note(kind, text) for kind, text in notes), outcome]),
            ("Data", data),
            ("Model", [_model_facts(args, module), Pre(_sde_text(em.sde))]),
            ("Estimates and standard errors", [table, *([Note("warning", note)] if note else [])]),
            *_identified_section(module, em),
            ("Data and the smoothed signal (95% band)", figures["smoothed_observations.png"]),
            ("Latent states (95% band)", figures["smoothed_states.png"]),
            ("EM progress", figures["em_history.png"]),
            (
                "Residual checks: the standardised one-step-ahead prediction errors, i.i.d. "
                "N(0, 1) under the model; small p-values say what it misses",
                [checks, *([checks_figure] if checks_figure is not None else [])],
            ),
            *forecast_section,
            ("Settings", settings),
            ("Versions", versions()),
        ],
    )
    return _status(args, notes)


def _criteria_line(criteria: dict) -> str:
    """AIC, AICc and BIC in one line, with the counts they use."""
    c = criteria
    return (
        f"AIC {c['aic']:.6g}, AICc {c['aicc']:.6g}, BIC {c['bic']:.6g} ({c['parameters']} "
        f"identified parameters, {c['observations']} observed values)"
    )


def _status(args, notes) -> int:
    """0, or with `--strict` `EXIT_WARNINGS` when a note is a warning."""
    return EXIT_WARNINGS if args.strict and any(kind != "ok" for kind, _ in notes) else 0


def _print_warnings(notes) -> None:
    for kind, text in notes:
        if kind != "ok":
            print(f"sdessm: warning: {text}", file=sys.stderr)


def _em_history_csv(em) -> str:
    """One row per EM iterate: the log-likelihood, and the log-posterior for MAP."""
    posts = em.report.get("log_posteriors")
    header = "iteration,log_likelihood" + (",log_posterior" if posts is not None else "")
    rows = [
        f"{i},{float(ll)!r}" + (f",{float(posts[i])!r}" if posts is not None else "")
        for i, ll in enumerate(em.log_likelihoods)
    ]
    return "\n".join([header, *rows]) + "\n"


def _forecast_outputs(times, y, names, result) -> dict:
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


# --------------------------------------------------------------------------- NUTS


HDI_PROB = 0.94


def _display_table(table):
    """A recovery table with its interval columns named by their level."""
    level = f"{HDI_PROB:.0%}"
    return table.rename(columns={"hdi_low": f"{level} HDI low", "hdi_high": f"{level} HDI high"})


def _nuts_verdict(idata, table, chains: int) -> list[tuple[str, str]]:
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


def _nuts(args, module, times, y, init, truth=None):
    """NUTS with its warnings recorded: `(ArviZ data, warning lines)`."""
    from .infer import fit_nuts

    with _recorded_warnings() as caught:
        idata = fit_nuts(
            module.model,
            y,
            times,
            num_warmup=args.warmup,
            num_samples=args.draws,
            num_chains=args.chains,
            init=init,
            truth=truth,
            seed=args.seed,
            checkpoint=getattr(args, "checkpoint", None),
            target_accept_prob=args.target_accept,
        )
    return idata, _warning_lines(caught)


def sample_command(args: argparse.Namespace) -> int:
    """NUTS on data from a CSV file."""
    from .diagnostics import plot_recovery, plot_trace_rank, recovery_table
    from .forecast import forecast_posterior
    from .io import describe_data
    from .report import Note, Pre, versions

    module = _load_model(args)
    times, y, names = _read_data(args)
    _check_out(args)
    future = _future_times(times, args.forecast) if args.forecast else None
    init, caught = None, []
    if args.init is not None and not args.init_from_em:
        raise ValueError("--init sets the start of EM: give it with --init-from-em.")
    if args.init_from_em:
        print(f"EM (MAP) of {args.model} to start the chains", flush=True)
        init, caught = _fit_em(args, module, times, y, "map", init=args.init)
    print(
        f"NUTS of {args.model} on {len(times)} rows of {names}: {args.chains} chains x "
        f"({args.warmup} warmup + {args.draws} draws)",
        flush=True,
    )
    idata, more = _nuts(args, module, times, y, init)
    table = recovery_table(idata, functional=_identified_functional(module), hdi_prob=HDI_PROB)
    shown = _display_table(table).drop(columns=["truth", "truth_in_hdi", "em_in_hdi"])
    print(shown.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"))
    notes = _nuts_verdict(idata, table, args.chains) + [("warning", t) for t in caught + more]
    _print_warnings(notes)
    figures = {"posterior.png": plot_recovery(table), "trace_rank.png": plot_trace_rank(idata)}
    extra, sections = {}, []
    if future is not None:
        print(f"posterior predictive forecast of {args.forecast} steps", flush=True)
        paths = forecast_posterior(module.model, idata, y, times, future, seed=args.seed)
        extra = _forecast_outputs(times, y, names, paths)
        sections = [("Posterior predictive forecast (95% band)", extra["forecast.png"])]
    options = ("model", "chains", "warmup", "draws", "seed", "target_accept", "init_from_em")
    settings = _settings(args, (*options, "time_column", "columns", "forecast", "checkpoint"))
    level = f"{HDI_PROB:.0%}"
    _write_results(
        args,
        {"posterior.nc": idata, "summary.csv": table.to_csv(), **figures, **extra},
        f"sdessm sample: {args.model} on {args.data}",
        [
            ("Result", [Note(kind, text) for kind, text in notes]),
            ("Data", {"file": args.data, **describe_data(times, y, names)}),
            ("Model", [_model_facts(args, module), Pre(_GENERAL_MODEL)]),
            (f"Posterior: mean, sd, {level} highest-density interval, R-hat, ESS", shown),
            (f"Posterior means and {level} HDIs", figures["posterior.png"]),
            ("Chains", figures["trace_rank.png"]),
            *sections,
            ("Settings", settings),
            ("Versions", versions()),
        ],
    )
    return _status(args, notes)


# --------------------------------------------------------------------------- demo, simulate


def _start_values(truth: dict) -> dict:
    """A wrong start for the demo: every true value scaled by 0.7 (signs kept)."""
    import numpy as np

    return {k: 0.7 * np.asarray(v, dtype=float) for k, v in truth.items()}


def _simulate_zoo(module, n: int, dt: float, missing: float, seed: int):
    """`(times, x, y)`: a model simulated at `TRUE_PARAMS`, a `missing` fraction of y NaN."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .io import decimal_grid
    from .simulate import simulate

    sde = module.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in module.TRUE_PARAMS.items()})
    times = decimal_grid(0.0, dt, n)
    x, y = simulate(jax.random.key(seed), sde, times)
    x, y = np.asarray(x), np.array(y)
    y[np.random.default_rng(seed).uniform(size=y.shape) < missing] = np.nan
    return times, x, y


def _coverage_note(table) -> str:
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


def demo(args: argparse.Namespace) -> int:
    """Simulate a zoo model with known truth, fit by EM (MAP) and NUTS, compare, report."""
    import numpy as np

    from .diagnostics import plot_em_history, plot_recovery, plot_trace_rank, recovery_table
    from .io import describe_data, json_text
    from .report import Note, Pre, versions

    module = _load_model(args, needs=("TRUE_PARAMS", "to_sde"))
    _check_out(args)
    clock = time.perf_counter()
    truth = {k: np.asarray(v, dtype=float) for k, v in module.TRUE_PARAMS.items()}
    print(f"[1/5] simulating {args.model}: T = {args.n}, dt = {args.dt}", flush=True)
    times, x, y = _simulate_zoo(module, args.n, args.dt, args.missing, args.seed)
    print(f"      {int(np.isnan(y).sum())} of {y.size} values removed (missing)", flush=True)
    names = [f"y{i}" for i in range(y.shape[1])] if y.shape[1] > 1 else ["y"]

    print("[2/5] EM (MAP) from a wrong start", flush=True)
    start = {**_start_values(truth), **(args.init or {})}
    em, caught = _fit_em(args, module, times, y, "map", init=start)
    ll = f"log-likelihood {em.log_likelihoods[0]:.2f} -> {em.log_likelihood:.2f}"
    print(f"      {_em_summary(em, ll)}", flush=True)
    print(
        f"[3/5] NUTS: {args.chains} chains x ({args.warmup} warmup + {args.draws} draws)",
        flush=True,
    )
    idata, more = _nuts(args, module, times, y, em, truth)
    print("[4/5] recovery: truth vs EM vs posterior", flush=True)
    table = recovery_table(idata, functional=_identified_functional(module), hdi_prob=HDI_PROB)
    shown = _display_table(table).drop(columns=["ess_tail", "truth_in_hdi", "em_in_hdi"])
    print(shown.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"), flush=True)
    coverage = _coverage_note(table)
    print(coverage, flush=True)
    notes = _em_verdict(em, args, None, []) + _nuts_verdict(idata, table, args.chains)
    notes += [("warning", t) for t in caught + more]
    _print_warnings(notes)

    print(f"[5/5] writing {args.out}", flush=True)
    figures = {
        **_smoothing_figures(times, y, names, em.sde, x),
        "em_history.png": plot_em_history(em),
        "recovery.png": plot_recovery(table),
        "trace_rank.png": plot_trace_rank(idata),
    }
    source = f"simulated from {args.model} at its TRUE_PARAMS (seed {args.seed})"
    data = {"source": source, **describe_data(times, y, names)}
    options = ("model", "n", "dt", "missing", "chains", "warmup", "draws", "seed", "iters")
    settings = _settings(args, options)
    results = {
        "model": args.model,
        "data": data,
        "settings": settings,
        "truth": truth,
        "em": {
            "objective": "map",
            "params": em.params,
            "log_likelihood": em.log_likelihood,
            "converged": em.converged,
            "stopped": em.report["stopped"],
            "iterations": em.num_iters,
        },
        "recovery": table.to_dict(orient="index"),
        "hdi_prob": HDI_PROB,
        "warnings": [text for kind, text in notes if kind != "ok"],
        "versions": versions(),
    }
    level = f"{HDI_PROB:.0%}"
    coverage_kind = "info" if coverage.startswith("Every") else "warning"
    _write_results(
        args,
        {
            "params.json": json_text(results),
            "em_history.csv": _em_history_csv(em),
            "posterior.nc": idata,
            **figures,
        },
        f"sdessm demo: {args.model}",
        [
            ("Result", [Note(kind, text) for kind, text in notes]),
            (
                "Recovery: truth, EM (MAP) and the NUTS posterior",
                [shown, Note(coverage_kind, coverage)],
            ),
            (f"Parameters: posterior mean and {level} HDI, truth and EM", figures["recovery.png"]),
            ("Data", data),
            ("Model", [_model_facts(args, module), Pre(_GENERAL_MODEL)]),
            (
                "Data and the smoothed signal at the EM estimate (95% band)",
                figures["smoothed_observations.png"],
            ),
            (
                "Latent states at the EM estimate (95% band) and the truth",
                figures["smoothed_states.png"],
            ),
            ("EM progress", figures["em_history.png"]),
            ("NUTS chains", figures["trace_rank.png"]),
            ("Settings", settings),
            ("Versions", versions()),
        ],
    )
    print(f"done in {time.perf_counter() - clock:.0f} s")
    return _status(args, notes)


def simulate_command(args: argparse.Namespace) -> int:
    """Simulate a zoo model at its default parameters and write the observations as CSV."""
    from .io import write_csv

    module = _load_model(args, needs=("TRUE_PARAMS", "to_sde"))
    _check_out(args, kind="file")
    times, _, y = _simulate_zoo(module, args.n, args.dt, args.missing, args.seed)
    names = [f"y{i}" for i in range(y.shape[1])] if y.shape[1] > 1 else ["y"]
    try:
        write_csv(args.out, times, y, names)
    except OSError as err:
        raise _Failed(f"cannot write --out {args.out}: {err.strerror or err}") from None
    print(
        f"wrote {args.out}: {args.n} rows of t,{','.join(names)} "
        f"({args.model} at {module.TRUE_PARAMS})"
    )
    return 0


def models(args: argparse.Namespace) -> int:
    """List the zoo, one line each."""
    from .models import available

    zoo = available()
    width = max(map(len, zoo))
    for name, summary in sorted(zoo.items()):
        print(f"{name:<{width}}  {summary}")
    return 0


def data_command(args: argparse.Namespace) -> int:
    """List the shipped data sets, or write one as CSV."""
    import shutil

    from . import datasets
    from .io import atomic_path

    if args.name is None:
        for name in sorted(datasets.available()):
            info = datasets.info(name)
            print(f"{name}: {info['summary']}")
            print(f"  source: {info['source']}")
            print(f"  licence: {info['licence']}")
        return 0
    info = datasets.info(args.name)
    args.out = args.out or f"{args.name}.csv"
    _check_out(args, kind="file")
    try:
        with atomic_path(args.out) as tmp:
            shutil.copyfile(info["path"], tmp)
    except OSError as err:
        raise _Failed(f"cannot write --out {args.out}: {err.strerror or err}") from None
    print(f"wrote {args.out} ({info['summary']}; time column {info['time_column']!r})")
    return 0


# --------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


_MODEL_HELP = (
    "a zoo model (see `sdessm models`) or the path to a model file of your own (my_model.py: "
    "a NumPyro model; see 'Write your own model' in the documentation)"
)
_FORCE_HELP = (
    "replace an existing --out that sdessm did not write (a file, or a folder with other "
    "files); never an input file, the current folder or a folder above it"
)


def _parser(sub, name: str, help: str):
    p = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--no-compilation-cache",
        dest="compilation_cache",
        action="store_false",
        help="compile every program anew instead of reusing those compiled by earlier runs "
        "(kept in $SDESSM_COMPILATION_CACHE or ~/.cache/sdessm/jax; see docs/cli.md)",
    )
    return p


def _add_simulation(p, n: int, dt: float, missing: float) -> None:
    p.add_argument("--n", type=_count(2), default=n, help="number of time steps (rows)")
    p.add_argument("--dt", type=_positive, default=dt, help="time step")
    p.add_argument(
        "--missing", type=_fraction, default=missing, help="fraction of values removed, in [0, 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")


def _add_em(p) -> None:
    p.add_argument("--iters", type=_count(1), default=500, help="most EM iterations")
    p.add_argument(
        "--init",
        type=_site_values,
        default=None,
        metavar="NAME=VALUE,...",
        help="start EM at these parameter values, in the data's units (e.g. theta=0.5,u=1; a "
        "vector as omega=[1,2]); parameters not named start from the model's default",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help=f"exit with status {EXIT_WARNINGS} (results written all the same) when the fit did "
        "not converge, sits on a boundary, or another warning was printed",
    )
    p.add_argument(
        "--psd",
        choices=("report", "nearest"),
        default="report",
        help="when the diffusion Q recovered from a closed-form fit (the unconstrained model) is "
        "not positive semi-definite: 'report' stops with an error, 'nearest' uses the nearest "
        "PSD matrix and says so",
    )


def _add_nuts(p, warmup: int, draws: int) -> None:
    p.add_argument("--chains", type=_count(1), default=4, help="NUTS chains")
    p.add_argument("--warmup", type=_count(1), default=warmup, help="warm-up draws per chain")
    p.add_argument("--draws", type=_count(1), default=draws, help="draws kept per chain")
    p.add_argument(
        "--target-accept",
        type=_fraction,
        default=0.8,
        help="NUTS target acceptance probability (raise it, e.g. to 0.95, against divergences)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sdessm",
        description=__doc__.splitlines()[0],
        epilog="`sdessm COMMAND --help` describes a command and its options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _parser(sub, "demo", "simulate a zoo model, fit it by EM and NUTS, compare with the truth")
    p.add_argument("--model", default="damped_oscillator", help=_MODEL_HELP)
    p.add_argument("--out", default="demo-output", help="output folder")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    _add_simulation(p, n=400, dt=0.1, missing=0.1)
    p.add_argument("--num-timesteps", type=_count(2), dest="n", help=argparse.SUPPRESS)
    _add_nuts(p, warmup=500, draws=500)
    _add_em(p)
    p.set_defaults(func=demo, target_accept=0.8)

    p = _parser(sub, "models", "list the model zoo")
    p.set_defaults(func=models)

    p = _parser(sub, "data", "list the real data sets shipped with sdessm, or write one as CSV")
    p.add_argument("name", nargs="?", default=None, help="data set to write (omit to list them)")
    p.add_argument("--out", default=None, help="CSV file to write (default: NAME.csv)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=data_command)

    p = _parser(sub, "simulate", "simulate a model at its TRUE_PARAMS and write the data as CSV")
    p.add_argument("--model", default="damped_oscillator", help=_MODEL_HELP)
    _add_simulation(p, n=500, dt=0.1, missing=0.0)
    p.add_argument("--out", default="data.csv", help="CSV file to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=simulate_command)

    for name, func, text in (
        ("fit", fit_command, "fit a model by EM to a CSV file (empty cells are missing values)"),
        ("sample", sample_command, "sample a model's posterior by NUTS given a CSV file"),
    ):
        p = _parser(sub, name, text)
        p.add_argument("data", help="CSV file with a header row; empty cells are missing values")
        p.add_argument("--model", default="damped_oscillator", help=_MODEL_HELP)
        p.add_argument("--time-column", default="t", help="name of the time column")
        p.add_argument(
            "--columns", default=None, help="value columns, comma-separated (default: all others)"
        )
        p.add_argument("--out", default=f"{name}-output", help="output folder")
        p.add_argument("--force", action="store_true", help=_FORCE_HELP)
        p.add_argument(
            "--forecast",
            type=_count(1),
            default=None,
            metavar="N",
            help="also forecast N steps (the data's median step) past the last row, with 95%% "
            + ("bands at the EM estimate" if name == "fit" else "posterior predictive bands"),
        )
        p.add_argument(
            "--checkpoint",
            default=None,
            metavar="FILE",
            help="save the run in FILE as it goes; if FILE holds this run, continue from it "
            + (
                "(after an interruption)"
                if name == "fit"
                else "(after an interruption, or to more --draws without a new warm-up)"
            ),
        )
        if name == "fit":
            p.add_argument(
                "--objective",
                choices=("mle", "map"),
                default="mle",
                help="maximum likelihood, or the posterior mode under the model's priors",
            )
            _add_em(p)
        else:
            _add_nuts(p, warmup=1000, draws=1000)
            p.add_argument("--seed", type=int, default=0, help="random seed")
            p.add_argument(
                "--init-from-em",
                action="store_true",
                help="start every chain at the EM (MAP) estimate",
            )
            _add_em(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the command line is an entry point: float64
    args = build_parser().parse_args(argv)
    try:
        if args.compilation_cache:  # before the command compiles anything
            from .cache import enable_compilation_cache

            enable_compilation_cache()
        return args.func(args)
    except _Failed as err:
        return _fail(str(err), EXIT_FAILED)
    except FloatingPointError as err:  # a computation that left the valid region
        return _fail(f"the computation failed: {err}", EXIT_FAILED)
    except ValueError as err:  # the user's input: a message that names it
        return _fail(str(err))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written.", 130)


if __name__ == "__main__":
    sys.exit(main())
