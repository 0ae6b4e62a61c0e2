"""The `sdessm` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _start_values(truth: dict) -> dict:
    """A wrong start for the demo: every true value scaled by 0.7 (signs kept)."""
    import numpy as np

    return {k: 0.7 * np.asarray(v, dtype=float) for k, v in truth.items()}


def _model_and_output(args: argparse.Namespace):
    """`(zoo module, None)`, or `(None, why)` for an unknown model or an unwritable `args.out`,
    checked before any work."""
    from .models import load

    try:
        module = load(args.model)
    except ValueError as err:
        return None, str(err)
    return module, _writable_parent(args.out)


def _simulate_zoo(module, n: int, dt: float, missing: float, seed: int):
    """`(times, x, y)`: a zoo model simulated at `TRUE_PARAMS`, a `missing` fraction of y NaN."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .simulate import simulate

    sde = module.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in module.TRUE_PARAMS.items()})
    times = np.arange(n) * dt
    x, y = simulate(jax.random.key(seed), sde, times)
    x, y = np.asarray(x), np.array(y)
    y[np.random.default_rng(seed).uniform(size=y.shape) < missing] = np.nan
    return times, x, y


def demo(args: argparse.Namespace) -> int:
    """Simulate a zoo model with known truth, fit by EM (MAP) and NUTS, compare, report."""
    import numpy as np

    from .diagnostics import (
        identifiable,
        plot_em_history,
        plot_recovery,
        plot_smoothed_states,
        plot_trace_rank,
        recovery_table,
    )
    from .em import fit_em
    from .infer import fit_nuts
    from .kalman import rts_smoother

    module, problem = _model_and_output(args)
    if problem:
        return _fail(problem)
    clock = time.perf_counter()
    truth = {k: np.asarray(v, dtype=float) for k, v in module.TRUE_PARAMS.items()}
    print(f"[1/5] simulating {args.model}: T = {args.num_timesteps}, dt = {args.dt}", flush=True)
    times, x, y = _simulate_zoo(module, args.num_timesteps, args.dt, args.missing, args.seed)
    print(f"      {int(np.isnan(y).sum())} of {y.size} values removed (missing)", flush=True)

    print("[2/5] EM (MAP) from a wrong start", flush=True)
    em = fit_em(module.model, y, times, init=_start_values(truth), objective="map")
    print(
        f"      {em.num_iters} iterations ({em.report['stopped']}); log-likelihood "
        f"{em.log_likelihoods[0]:.2f} -> {em.log_likelihood:.2f}",
        flush=True,
    )
    print(
        f"[3/5] NUTS: {args.chains} chains x ({args.warmup} warmup + {args.draws} draws)",
        flush=True,
    )
    idata = fit_nuts(
        module.model,
        y,
        times,
        num_warmup=args.warmup,
        num_samples=args.draws,
        num_chains=args.chains,
        init=em,
        truth=truth,
        seed=args.seed,
    )
    print("[4/5] recovery: truth vs EM vs posterior", flush=True)
    functional = None
    if getattr(module, "EM_CLOSED_FORM", None) is not None:  # only functionals are identified
        functional = lambda v: identifiable(module.to_sde(**v))  # noqa: E731
    table = recovery_table(idata, functional=functional)
    shown = table[["truth", "em", "mean", "sd", "hdi_low", "hdi_high", "r_hat", "ess_bulk"]]
    print(shown.to_string(float_format=lambda v: f"{v:.4g}"), flush=True)

    print(f"[5/5] writing {args.out}", flush=True)
    smoothed = rts_smoother(em.sde, y, times)
    figures = {
        "smoothed_states.png": plot_smoothed_states(times, smoothed, y, x, H=em.sde.H),
        "em_history.png": plot_em_history(em),
        "recovery.png": plot_recovery(table),
        "trace_rank.png": plot_trace_rank(idata),
    }
    results = {
        "model": args.model,
        "truth": {k: v.tolist() for k, v in truth.items()},
        "em": {
            "objective": "map",
            "params": {k: np.asarray(v).tolist() for k, v in em.params.items()},
            "log_likelihood": em.log_likelihood,
            "converged": em.converged,
            "iterations": em.num_iters,
        },
        "recovery": json.loads(table.to_json(orient="index")),
    }
    problem = _write_results(
        args.out,
        {
            "params.json": json.dumps(results, indent=2),
            "em_history.csv": _em_history_csv(em),
            "posterior.nc": idata,
            **figures,
        },
        f"sdessm demo: {args.model}",
        [
            ("Recovery: truth, EM (MAP) and NUTS posterior", table),
            ("Parameters", figures["recovery.png"]),
            ("EM", figures["em_history.png"]),
            ("Smoothed states at the EM estimate", figures["smoothed_states.png"]),
            ("NUTS chains", figures["trace_rank.png"]),
        ],
    )
    if problem:
        return _fail(problem)
    print(
        f"wrote {args.out}/: params.json, em_history.csv, posterior.nc, report.html and "
        f"{len(figures)} PNG plots ({time.perf_counter() - clock:.0f} s)"
    )
    return 0


def _writable_parent(out: str) -> str | None:
    """Why the output folder `out` could not be written, checked before any work; None if it can."""
    import tempfile

    parent = Path(out).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        return f"cannot write the output folder {out}: {err.strerror or err}"
    return None


def simulate_command(args: argparse.Namespace) -> int:
    """Simulate a zoo model at its default parameters and write the observations as CSV."""
    from .io import write_csv

    module, problem = _model_and_output(args)
    if problem:
        return _fail(problem)
    times, _, y = _simulate_zoo(module, args.n, args.dt, args.missing, args.seed)
    names = [f"y{i}" for i in range(y.shape[1])] if y.shape[1] > 1 else ["y"]
    write_csv(args.out, times, y, names)
    print(
        f"wrote {args.out}: {args.n} rows of t,{','.join(names)} "
        f"({args.model} at {module.TRUE_PARAMS})"
    )
    return 0


def _em_history_csv(em) -> str:
    """One row per EM iterate: the log-likelihood, and the log-posterior for MAP."""
    posts = em.report.get("log_posteriors")
    header = "iteration,log_likelihood" + (",log_posterior" if posts is not None else "")
    rows = [
        f"{i},{float(ll)!r}" + (f",{float(posts[i])!r}" if posts is not None else "")
        for i, ll in enumerate(em.log_likelihoods)
    ]
    return "\n".join([header, *rows]) + "\n"


def _read_data(args: argparse.Namespace):
    from .io import read_csv

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    return read_csv(args.data, args.time_column, columns)


def _write_results(out: str, files: dict, title: str, sections: list) -> str | None:
    """Write `files` (name -> str, Figure or ArviZ data) and report.html into `out` at once."""
    from . import report
    from .io import atomic_folder

    try:
        with atomic_folder(out) as folder:
            for name, content in files.items():
                if isinstance(content, str):
                    (folder / name).write_text(content)
                elif hasattr(content, "savefig"):
                    content.savefig(folder / name, dpi=110)
                else:
                    content.to_netcdf(str(folder / name))
            report.write(folder / "report.html", title, sections)
    except OSError as err:
        return f"cannot write the output folder {out}: {err.strerror or err}"
    return None


def _future_times(times, n: int):
    """`n` future times after the data, spaced by the median step of the data."""
    import numpy as np

    if len(times) < 2:
        raise ValueError("--forecast needs at least two observation times to set its step.")
    return times[-1] + float(np.median(np.diff(times))) * np.arange(1, n + 1)


def _forecast_outputs(times, y, names, result) -> dict:
    """forecast.csv (95% bands per column) and forecast.png for a Forecast/PosteriorForecast."""
    import pandas as pd

    from .diagnostics import plot_forecast
    from .forecast import bands

    band = bands(result, 0.95)
    columns = {"t": result.times}
    for j, name in enumerate(names):
        for stat, values in band.items():
            columns[f"{name}_{stat}"] = values[:, j]
    csv = pd.DataFrame(columns).to_csv(index=False, float_format="%.10g")
    return {"forecast.csv": csv, "forecast.png": plot_forecast(times, y, result, names=names)}


def fit_command(args: argparse.Namespace) -> int:
    """EM on data from a CSV file."""
    import numpy as np
    import pandas as pd

    from .diagnostics import plot_em_history, plot_smoothed_states
    from .em import fit_em
    from .forecast import forecast
    from .kalman import rts_smoother

    module, problem = _model_and_output(args)
    if problem:
        return _fail(problem)
    try:
        times, y, names = _read_data(args)
        future = _future_times(times, args.forecast) if args.forecast else None
        print(f"EM ({args.objective}) of {args.model} on {len(times)} rows of {names}", flush=True)
        em = fit_em(module.model, y, times, objective=args.objective, checkpoint=args.checkpoint)
    except ValueError as err:
        return _fail(str(err))
    try:
        se = em.standard_errors()
    except ValueError:  # a flat direction: no standard errors, said in the table
        se = {k: np.full(np.shape(v), np.nan) for k, v in em.params.items()}
    rows = {}
    for k, v in em.params.items():
        for ix in np.ndindex(np.shape(v)):
            label = k + (f"[{','.join(map(str, ix))}]" if ix else "")
            rows[label] = {"estimate": float(np.asarray(v)[ix]), "se": float(np.asarray(se[k])[ix])}
    table = pd.DataFrame(rows).T
    print(
        f"{em.num_iters} iterations ({em.report['stopped']}); "
        f"log-likelihood {em.log_likelihood:.4f}"
    )
    print(table.to_string(float_format=lambda v: f"{v:.5g}"))
    smoothed = rts_smoother(em.sde, y, times)
    figures = {
        "smoothed_states.png": plot_smoothed_states(times, smoothed, y, H=em.sde.H),
        "em_history.png": plot_em_history(em),
    }
    extra, sections = {}, []
    if future is not None:
        extra = _forecast_outputs(times, y, names, forecast(em.sde, y, times, future))
        sections = [("Forecast at the EM estimate (95% band)", extra["forecast.png"])]
    results = {
        "model": args.model,
        "data": str(args.data),
        "objective": args.objective,
        "params": {k: np.asarray(v).tolist() for k, v in em.params.items()},
        "standard_errors": {k: np.asarray(v).tolist() for k, v in se.items()},
        "log_likelihood": em.log_likelihood,
        "converged": em.converged,
        "iterations": em.num_iters,
    }
    problem = _write_results(
        args.out,
        {
            "params.json": json.dumps(results, indent=2),
            "em_history.csv": _em_history_csv(em),
            **figures,
            **extra,
        },
        f"sdessm fit: {args.model} on {args.data}",
        [
            ("Estimates and standard errors", table),
            ("EM", figures["em_history.png"]),
            ("Smoothed states", figures["smoothed_states.png"]),
            *sections,
        ],
    )
    if problem:
        return _fail(problem)
    print(f"wrote {args.out}/: {_listing(['params.json', 'em_history.csv', *figures, *extra])}")
    return 0


def _listing(names) -> str:
    """`a, b, report.html`: the files an output folder holds."""
    return ", ".join([*names, "report.html"])


def sample_command(args: argparse.Namespace) -> int:
    """NUTS on data from a CSV file."""
    from .diagnostics import plot_recovery, plot_trace_rank, recovery_table
    from .em import fit_em
    from .forecast import forecast_posterior
    from .infer import fit_nuts

    module, problem = _model_and_output(args)
    if problem:
        return _fail(problem)
    try:
        times, y, names = _read_data(args)
        future = _future_times(times, args.forecast) if args.forecast else None
        init = None
        if args.init_from_em:
            print(f"EM (MAP) of {args.model} to start the chains", flush=True)
            init = fit_em(module.model, y, times, objective="map")
        print(
            f"NUTS of {args.model} on {len(times)} rows of {names}: {args.chains} chains x "
            f"({args.warmup} warmup + {args.draws} draws)",
            flush=True,
        )
        idata = fit_nuts(
            module.model,
            y,
            times,
            num_warmup=args.warmup,
            num_samples=args.draws,
            num_chains=args.chains,
            init=init,
            seed=args.seed,
            checkpoint=args.checkpoint,
        )
    except ValueError as err:
        return _fail(str(err))
    table = recovery_table(idata)
    shown = table[["em", "mean", "sd", "hdi_low", "hdi_high", "r_hat", "ess_bulk", "ess_tail"]]
    print(shown.to_string(float_format=lambda v: f"{v:.4g}"))
    figures = {"posterior.png": plot_recovery(table), "trace_rank.png": plot_trace_rank(idata)}
    extra, sections = {}, []
    if future is not None:
        print(f"posterior predictive forecast of {args.forecast} steps", flush=True)
        paths = forecast_posterior(module.model, idata, y, times, future, seed=args.seed)
        extra = _forecast_outputs(times, y, names, paths)
        sections = [("Posterior predictive forecast (95% band)", extra["forecast.png"])]
    problem = _write_results(
        args.out,
        {"posterior.nc": idata, "summary.csv": table.to_csv(), **figures, **extra},
        f"sdessm sample: {args.model} on {args.data}",
        [
            ("Posterior", table),
            ("Posterior means and HDIs", figures["posterior.png"]),
            ("Chains", figures["trace_rank.png"]),
            *sections,
        ],
    )
    if problem:
        return _fail(problem)
    print(f"wrote {args.out}/: {_listing(['posterior.nc', 'summary.csv', *figures, *extra])}")
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
    try:
        info = datasets.info(args.name)
    except ValueError as err:
        return _fail(str(err))
    out = args.out or f"{args.name}.csv"
    try:
        with atomic_path(out) as tmp:
            shutil.copyfile(info["path"], tmp)
    except OSError as err:
        return _fail(f"cannot write {out}: {err.strerror or err}")
    print(f"wrote {out} ({info['summary']}; time column {info['time_column']!r})")
    return 0


def _fail(message: str) -> int:
    print(f"sdessm: error: {message}", file=sys.stderr)
    return 2


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdessm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="simulate a zoo model, fit it by EM and NUTS, print the recovery table, report",
    )
    p.add_argument("--model", default="damped_oscillator", help="zoo model (see `sdessm models`)")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--num-timesteps", type=_positive(int), default=400)
    p.add_argument("--dt", type=_positive(float), default=0.1)
    p.add_argument("--missing", type=float, default=0.1, help="fraction of values removed")
    p.add_argument("--chains", type=_positive(int), default=4)
    p.add_argument("--warmup", type=_positive(int), default=500)
    p.add_argument("--draws", type=_positive(int), default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo)
    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=models)
    p = sub.add_parser(
        "data", help="list the real data sets shipped with sdessm, or write one as CSV"
    )
    p.add_argument("name", nargs="?", default=None, help="data set to write (omit to list them)")
    p.add_argument("--out", default=None, help="CSV file to write (default: NAME.csv)")
    p.set_defaults(func=data_command)
    p = sub.add_parser("simulate", help="simulate a zoo model and write the data as CSV")
    p.add_argument("--model", default="damped_oscillator")
    p.add_argument("--n", type=_positive(int), default=500, help="number of time steps")
    p.add_argument("--dt", type=_positive(float), default=0.1)
    p.add_argument("--missing", type=float, default=0.0, help="fraction of values removed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data.csv")
    p.set_defaults(func=simulate_command)
    for name, func, text in (
        ("fit", fit_command, "EM on a CSV file (empty cells are missing values)"),
        ("sample", sample_command, "NUTS on a CSV file (empty cells are missing values)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("data", help="CSV file with a header row")
        p.add_argument("--model", default="damped_oscillator")
        p.add_argument("--time-column", default="t")
        p.add_argument("--columns", default=None, help="value columns, comma-separated")
        p.add_argument("--out", default=f"{name}-output")
        p.add_argument(
            "--forecast",
            type=_positive(int),
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
            p.add_argument("--objective", choices=("mle", "map"), default="mle")
        else:
            p.add_argument("--chains", type=_positive(int), default=4)
            p.add_argument("--warmup", type=_positive(int), default=1000)
            p.add_argument("--draws", type=_positive(int), default=1000)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--init-from-em", action="store_true")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the command line is an entry point: float64
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
