"""The commands of the command line: `fit`, `compare`, `sample`, `demo`, `simulate`, `models`
and `data`.

Each command takes the parsed arguments (`sdessm.cli.build_parser`), checks its model, its data
and its `--out` before any work, runs, prints what it found and writes its results, and returns
its exit status. JAX, NumPyro and the heavier parts of sdessm are imported inside the commands,
so that the command line answers bad arguments first.
"""

from __future__ import annotations

import argparse
import time

from .runs import (
    Failed,
    check_out,
    compare_with_progress,
    em_with_warnings,
    exit_status,
    forecast_plan,
    load_model,
    load_models,
    nuts_with_warnings,
    print_warnings,
    read_data,
    simulate_model,
    true_params,
    write_results,
)
from .summaries import (
    GENERAL_MODEL,
    HDI_PROB,
    candidate_line,
    comparison_notes,
    comparison_results,
    coverage_note,
    criteria_line,
    display_table,
    em_history_csv,
    em_outcome,
    em_summary,
    em_table,
    em_verdict,
    forecast_outputs,
    identified_functional,
    identified_section,
    loo_facts,
    model_facts,
    model_summary,
    nuts_verdict,
    option_values,
    residual_checks,
    sde_text,
    smoothing_figures,
)

# --------------------------------------------------------------------------- fit (EM)


def fit_command(args: argparse.Namespace) -> int:
    """EM on data from a CSV file."""
    from .io import json_text
    from .report import Note, Pre, versions

    module = load_model(args)
    times, y, names = read_data(args)
    check_out(args)
    future = forecast_plan(args, times)
    print(f"EM ({args.objective}) of {args.model} on {len(times)} rows of {names}"
          + _driven_by(args), flush=True)  # fmt: skip
    em, caught = em_with_warnings(args, module, times, y, args.objective, init=args.init)
    table, se, note = em_table(em)
    notes = em_verdict(em, args, note, caught)
    criteria = em.information_criteria()
    print(em_summary(em, f"log-likelihood {em.log_likelihood:.6g}"))
    print(criteria_line(criteria))
    print(table.to_string(float_format=lambda v: f"{v:.5g}", na_rep="-"))
    print_warnings(notes)

    v = args.input_values
    figures, checks_section, checks_saved = _fit_figures(times, y, names, em, v)
    forecast_files, forecast_section = _fit_forecast(times, y, names, em, future, v)
    data = _data_facts(args, times, y, names)
    options = ("model", "objective", "iters", "psd", "time_column", "columns", "inputs")
    settings = option_values(args, (*options, "forecast", "future_inputs", "checkpoint"))
    results = _fit_results(
        args,
        em,
        notes,
        data=data,
        settings=settings,
        estimates=(se, note),
        criteria=criteria,
        checks=checks_saved,
    )
    write_results(
        args,
        {
            "params.json": json_text(results),
            "em_history.csv": em_history_csv(em),
            **figures,
            **forecast_files,
        },
        f"sdessm fit: {args.model} on {args.data}",
        [
            ("Result", [*(Note(kind, text) for kind, text in notes), em_outcome(em, criteria)]),
            ("Data", data),
            ("Model", [model_facts(args, module), Pre(sde_text(em.sde))]),
            ("Estimates and standard errors", [table, *([Note("warning", note)] if note else [])]),
            *identified_section(module, em),
            ("Data and the smoothed signal (95% band)", figures["smoothed_observations.png"]),
            ("Latent states (95% band)", figures["smoothed_states.png"]),
            ("EM progress", figures["em_history.png"]),
            checks_section,
            *forecast_section,
            ("Settings", settings),
            ("Versions", versions()),
        ],
    )
    return exit_status(args, notes)


def _data_facts(args, times, y, names) -> dict:
    """The data of a run on a CSV file as the report and params.json describe them: the file,
    `describe_data`, and the input columns of `--inputs`."""
    from .io import describe_data

    facts = {"file": args.data, **describe_data(times, y, names)}
    if getattr(args, "inputs", None):
        facts["inputs"] = ", ".join(args.inputs) + " (known, not fitted)"
    return facts


def _driven_by(args) -> str:
    """`, driven by [columns]` for a run with `--inputs`, else nothing."""
    return f", driven by {args.inputs}" if getattr(args, "inputs", None) else ""


def _fit_figures(times, y, names, em, inputs=None) -> tuple[dict, tuple, dict]:
    """The figures of a fit (the smoothed signal and states, EM's progress, the residuals) and
    its residual checks: `(figures, report section, checks for params.json)`."""
    from .diagnostics import plot_em_history

    figures = smoothing_figures(times, y, names, em.sde, inputs=inputs)
    figures["em_history.png"] = plot_em_history(em)
    checks, saved, figure = residual_checks(em.sde, times, y, names, inputs)
    if figure is not None:
        figures["residuals.png"] = figure
    section = (
        "Residual checks: the standardised one-step-ahead prediction errors, i.i.d. "
        "N(0, 1) under the model; small p-values say what it misses",
        [checks, *([figure] if figure is not None else [])],
    )
    return figures, section, saved


def _fit_forecast(times, y, names, em, future, inputs=None) -> tuple[dict, list]:
    """forecast.csv and forecast.png at the EM estimate, and their report section; nothing
    without `--forecast` (`future` `(None, None)`; else the future times and inputs)."""
    from .forecast import forecast

    future, future_inputs = future
    if future is None:
        return {}, []
    result = forecast(em.sde, y, times, future, inputs=inputs, future_inputs=future_inputs)
    files = forecast_outputs(times, y, names, result)
    return files, [("Forecast at the EM estimate (95% band)", files["forecast.png"])]


def _fit_results(args, em, notes, *, data, settings, estimates, criteria, checks) -> dict:
    """What params.json holds of a fit: its data and settings, the estimates and their standard
    errors (`estimates`: the standard errors and the note on them), the log-likelihood and the
    information criteria, the residual checks, how EM ended and its warnings."""
    from .report import versions

    se, note = estimates
    return {
        "model": args.model,
        "data": data,
        "settings": settings,
        "objective": args.objective,
        "params": em.params,
        "standard_errors": se,
        "standard_errors_note": note,
        "log_likelihood": em.log_likelihood,
        "information_criteria": criteria,
        "residual_tests": checks,
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


# --------------------------------------------------------------------------- compare (EM)


def compare_command(args: argparse.Namespace) -> int:
    """EM of several models on data from a CSV file, and the choice among them."""
    from .comparison import plot_comparison
    from .io import json_text
    from .report import Note, versions

    specs = load_models(args)
    times, y, names = read_data(args)
    check_out(args)
    v = args.input_values
    if v is not None:
        specs = [(spec, module, {**(kw or {}), "inputs": v}) for spec, module, kw in specs]
    print(f"EM ({args.objective}) of {len(specs)} models on {len(times)} rows of {names}"
          + _driven_by(args))  # fmt: skip
    result = compare_with_progress(args, specs, times, y, candidate_line)
    table = result.table()
    print(table.drop(columns="note").to_string(float_format=lambda v: f"{v:.6g}", na_rep="-"))
    notes = comparison_notes(result)
    for kind, text in notes:
        if kind == "warning":
            print_warnings([(kind, text)])
        else:
            print(text)
    chosen = result.fits[result.choice]
    checks, _, residuals = residual_checks(chosen.sde, times, y, names, v)
    figures = {"comparison.png": plot_comparison(result)}
    figures |= {"residuals.png": residuals} if residuals is not None else {}
    data = _data_facts(args, times, y, names)
    options = ("models", "objective", "iters", "psd", "time_column", "columns", "inputs", "nuts")
    nuts = ("chains", "warmup", "draws", "target_accept", "seed") if args.nuts else ()
    settings = option_values(args, options + nuts)
    saved = comparison_results(result, data=data, settings=settings, versions=versions())
    write_results(
        args,
        {"comparison.csv": table.to_csv(), "comparison.json": json_text(saved), **figures},
        f"sdessm compare: {', '.join(args.models)} on {args.data}",
        [
            ("Result", [Note(kind, text) for kind, text in notes]),
            ("Models compared (delta: from the best certified fit)", table),
            ("Delta AIC and delta BIC", figures["comparison.png"]),
            (f"Residual checks of the chosen model, {result.choice}", [checks, residuals]),
            ("Data", data),
            ("Models", {spec: model_summary(module) for spec, module, _ in specs}),
            ("Settings", settings),
            ("Versions", versions()),
        ],
    )
    return exit_status(args, [(k, t) for k, t in notes if k == "warning"])


# --------------------------------------------------------------------------- sample (NUTS)


def sample_command(args: argparse.Namespace) -> int:
    """NUTS on data from a CSV file."""
    from .diagnostics import plot_recovery, plot_trace_rank, recovery_table
    from .forecast import forecast_posterior
    from .report import Note, Pre, versions

    module = load_model(args)
    times, y, names = read_data(args)
    check_out(args)
    future, future_inputs = forecast_plan(args, times)
    init, caught = None, []
    if args.init is not None and not args.init_from_em:
        raise ValueError("--init sets the start of EM: give it with --init-from-em.")
    if args.init_from_em:
        print(f"EM (MAP) of {args.model} to start the chains", flush=True)
        init, caught = em_with_warnings(args, module, times, y, "map", init=args.init)
    print(
        f"NUTS of {args.model} on {len(times)} rows of {names}{_driven_by(args)}: "
        f"{args.chains} chains x "
        f"({args.warmup} warmup + {args.draws} draws)",
        flush=True,
    )
    idata, more = nuts_with_warnings(args, module, times, y, init)
    table = recovery_table(idata, functional=identified_functional(module), hdi_prob=HDI_PROB)
    shown = display_table(table).drop(columns=["truth", "truth_in_hdi", "em_in_hdi"])
    print(shown.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"))
    notes = nuts_verdict(idata, table, args.chains) + [("warning", t) for t in caught + more]
    loo = loo_facts(idata)
    print("PSIS-LOO: " + "; ".join(f"{k} {v}" for k, v in loo.items() if k != "reading"))
    print_warnings(notes)
    figures = {"posterior.png": plot_recovery(table), "trace_rank.png": plot_trace_rank(idata)}
    extra, sections = {}, []
    if future is not None:
        print(f"posterior predictive forecast of {args.forecast} steps", flush=True)
        kwargs = args.model_kwargs or None
        paths = forecast_posterior(
            module.model, idata, y, times, future, seed=args.seed, model_kwargs=kwargs,
            future_inputs=future_inputs,
        )  # fmt: skip
        extra = forecast_outputs(times, y, names, paths)
        sections = [("Posterior predictive forecast (95% band)", extra["forecast.png"])]
    options = ("model", "chains", "warmup", "draws", "seed", "target_accept", "init_from_em")
    data_options = ("time_column", "columns", "inputs", "forecast", "future_inputs", "checkpoint")
    settings = option_values(args, (*options, *data_options))
    level = f"{HDI_PROB:.0%}"
    write_results(
        args,
        {"posterior.nc": idata, "summary.csv": table.to_csv(), **figures, **extra},
        f"sdessm sample: {args.model} on {args.data}",
        [
            ("Result", [Note(kind, text) for kind, text in notes]),
            ("Data", _data_facts(args, times, y, names)),
            ("Model", [model_facts(args, module), Pre(GENERAL_MODEL)]),
            (f"Posterior: mean, sd, {level} highest-density interval, R-hat, ESS", shown),
            (f"Posterior means and {level} HDIs", figures["posterior.png"]),
            ("Chains", figures["trace_rank.png"]),
            ("Predictive accuracy (PSIS-LOO)", loo),
            *sections,
            ("Settings", settings),
            ("Versions", versions()),
        ],
    )
    return exit_status(args, notes)


# --------------------------------------------------------------------------- demo


def demo(args: argparse.Namespace) -> int:
    """Simulate a zoo model with known truth, fit by EM (MAP) and NUTS, compare, report."""
    import numpy as np

    from .diagnostics import plot_em_history, plot_recovery, plot_trace_rank
    from .io import describe_data, json_text
    from .report import Note, Pre, versions

    module = load_model(args, needs=("TRUE_PARAMS", "to_sde"))
    check_out(args)
    clock = time.perf_counter()
    truth = {k: np.asarray(v, dtype=float) for k, v in true_params(args, module).items()}
    times, x, y, names, v = _demo_data(args, module, truth)
    if v is not None:  # a driven model: its example inputs drive the fits too
        args.model_kwargs = {**(args.model_kwargs or {}), "inputs": v}
    em, idata, caught = _demo_fits(args, module, times, y, truth)
    table, shown, coverage = _demo_recovery(module, idata)
    notes = em_verdict(em, args, None, []) + nuts_verdict(idata, table, args.chains)
    notes += [("warning", t) for t in caught]
    print_warnings(notes)

    print(f"[5/5] writing {args.out}", flush=True)
    figures = {
        **smoothing_figures(times, y, names, em.sde, x, inputs=v),
        "em_history.png": plot_em_history(em),
        "recovery.png": plot_recovery(table),
        "trace_rank.png": plot_trace_rank(idata),
    }
    source = f"simulated from {args.model} at the truth below (seed {args.seed})"
    data = {"source": source, **describe_data(times, y, names)}
    if v is not None:
        names_v = getattr(module, "INPUT_NAMES", None) or ["v"]
        data["inputs"] = f"{', '.join(names_v)}: the model's example_inputs (known, not fitted)"
    options = ("model", "n", "dt", "missing", "chains", "warmup", "draws", "seed", "iters")
    settings = option_values(args, options)
    results = _demo_results(args, em, table, notes, data=data, settings=settings, truth=truth)
    level = f"{HDI_PROB:.0%}"
    coverage_kind = "info" if coverage.startswith("Every") else "warning"
    write_results(
        args,
        {
            "params.json": json_text(results),
            "em_history.csv": em_history_csv(em),
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
            ("Model", [model_facts(args, module), Pre(GENERAL_MODEL)]),
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
    return exit_status(args, notes)


def _demo_data(args, module, truth):
    """Step 1 of the demo: `(times, x, y, names, inputs)`, the model simulated at `truth` (its
    `TRUE_PARAMS`, or `true_params` for orders given) with a fraction `--missing` removed; the
    inputs of a driven model (its `example_inputs`), else None."""
    import numpy as np

    print(f"[1/5] simulating {args.model}: T = {args.n}, dt = {args.dt}", flush=True)
    times, x, y, v = simulate_model(module, truth, args.n, args.dt, args.missing, args.seed)
    print(f"      {int(np.isnan(y).sum())} of {y.size} values removed (missing)", flush=True)
    names = [f"y{i}" for i in range(y.shape[1])] if y.shape[1] > 1 else ["y"]
    return times, x, y, names, v


def _demo_fits(args, module, times, y, truth):
    """Steps 2 and 3 of the demo: EM (MAP) from a wrong start, then NUTS from the EM estimate:
    `(EM result, ArviZ data, the warning lines of both)`."""
    print("[2/5] EM (MAP) from a wrong start", flush=True)
    start = {**_start_values(truth), **(args.init or {})}
    em, caught = em_with_warnings(args, module, times, y, "map", init=start)
    ll = f"log-likelihood {em.log_likelihoods[0]:.2f} -> {em.log_likelihood:.2f}"
    print(f"      {em_summary(em, ll)}", flush=True)
    print(
        f"[3/5] NUTS: {args.chains} chains x ({args.warmup} warmup + {args.draws} draws)",
        flush=True,
    )
    idata, more = nuts_with_warnings(args, module, times, y, em, truth)
    return em, idata, caught + more


def _demo_recovery(module, idata):
    """Step 4 of the demo: truth vs EM vs posterior, printed: `(recovery table, the table as
    shown, the note on the truths outside their intervals)`."""
    from .diagnostics import recovery_table

    print("[4/5] recovery: truth vs EM vs posterior", flush=True)
    table = recovery_table(idata, functional=identified_functional(module), hdi_prob=HDI_PROB)
    shown = display_table(table).drop(columns=["ess_tail", "truth_in_hdi", "em_in_hdi"])
    print(shown.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"), flush=True)
    coverage = coverage_note(table)
    print(coverage, flush=True)
    return table, shown, coverage


def _demo_results(args, em, table, notes, *, data, settings, truth) -> dict:
    """What the demo's params.json holds: its data and settings, the truth, the EM fit, the
    recovery table and the warnings."""
    from .report import versions

    return {
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


def _start_values(truth: dict) -> dict:
    """A wrong start for the demo: every true value scaled by 0.7 (signs kept)."""
    import numpy as np

    return {k: 0.7 * np.asarray(v, dtype=float) for k, v in truth.items()}


# --------------------------------------------------------------------------- simulate, models, data


def simulate_command(args: argparse.Namespace) -> int:
    """Simulate a zoo model at its default parameters and write the observations as CSV (and
    a driven model's example inputs, `example_inputs`, as columns of their own)."""
    import numpy as np

    from .io import write_csv

    module = load_model(args, needs=("TRUE_PARAMS", "to_sde"))
    check_out(args, kind="file")
    truth = true_params(args, module)
    times, _, y, v = simulate_model(module, truth, args.n, args.dt, args.missing, args.seed)
    names = [f"y{i}" for i in range(y.shape[1])] if y.shape[1] > 1 else ["y"]
    inputs = list(getattr(module, "INPUT_NAMES", [])) if v is not None else []
    if v is not None:  # a driven model's inputs are written beside the data, to fit with
        inputs = inputs if len(inputs) == v.shape[1] else [f"v{j}" for j in range(v.shape[1])]
        y = np.concatenate([y, v], axis=1)
    try:
        write_csv(args.out, times, y, names + inputs)
    except OSError as err:
        raise Failed(f"cannot write --out {args.out}: {err.strerror or err}") from None
    columns = ",".join(["t", *names, *inputs])
    print(f"wrote {args.out}: {args.n} rows of {columns} ({args.model} at {truth})")
    if inputs:
        print(f"the known inputs are in {inputs}: fit with --inputs {','.join(inputs)}")
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
    from .outputs import atomic_path

    if args.name is None:
        for name in sorted(datasets.available()):
            info = datasets.info(name)
            print(f"{name}: {info['summary']}")
            print(f"  source: {info['source']}")
            print(f"  licence: {info['licence']}")
        return 0
    info = datasets.info(args.name)
    args.out = args.out or f"{args.name}.csv"
    check_out(args, kind="file")
    try:
        with atomic_path(args.out) as tmp:
            shutil.copyfile(info["path"], tmp)
    except OSError as err:
        raise Failed(f"cannot write --out {args.out}: {err.strerror or err}") from None
    print(f"wrote {args.out} ({info['summary']}; time column {info['time_column']!r})")
    return 0
