"""The `sdessm` command line: simulate, fit (EM), compare (EM), sample (NUTS), demo, models, data.

Every command checks its arguments, its model, its data and its output path before any work. A
user error (a bad option, a missing file, data no fit can use, an output path that holds what
the user owns) prints one line and exits with status 2; a computation that fails prints one line
and exits with status 1. Results are written whole or not at all.
"""

from __future__ import annotations

import argparse
import math
import sys

from .commands import (
    compare_command,
    data_command,
    demo,
    fit_command,
    models,
    sample_command,
    simulate_command,
)
from .runs import EXIT_FAILED, EXIT_USAGE, EXIT_WARNINGS, Failed

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


def _model_list(text: str) -> list[str]:
    """Two or more model names, comma-separated, each once (`ou,carma:2,carma:3`)."""
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names):
        raise argparse.ArgumentTypeError(f"must be model names separated by commas; got {text!r}")
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"must name two models or more to compare; got {text!r}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"names {', '.join(twice)} twice")
    return names


def _column_list(text: str) -> list[str]:
    """One or more column names, comma-separated, each once (`heater,outside`)."""
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names):
        raise argparse.ArgumentTypeError(f"must be column names separated by commas; got {text!r}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"names {', '.join(twice)} twice")
    return names


def _add_inputs(p, forecast: bool) -> None:
    p.add_argument(
        "--inputs",
        type=_column_list,
        default=None,
        metavar="COLUMN,...",
        help="columns of known inputs that drive the model (a stimulus, a forcing; no empty "
        "cells), for a model that takes them (e.g. driven_ou); they are not fitted as data",
    )
    if forecast:
        p.add_argument(
            "--future-inputs",
            default=None,
            metavar="FILE",
            help="with --inputs and --forecast N: a CSV file with the time column and the input "
            "columns at the times to forecast (its first N rows, after the data's last time)",
        )


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"sdessm: error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


# --------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


_MODEL_HELP = (
    "a zoo model (see `sdessm models`) or the path to a model file of your own (my_model.py: "
    "a NumPyro model; see 'Write your own model' in the documentation); a model with orders "
    "takes them after colons: carma:3 is CARMA(3, 0), carma:3:1 is CARMA(3, 1)"
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


def _add_em(p, init: bool = True) -> None:
    p.add_argument("--iters", type=_count(1), default=500, help="most EM iterations")
    if init:
        _add_init(p)
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


def _add_init(p) -> None:
    p.add_argument(
        "--init",
        type=_site_values,
        default=None,
        metavar="NAME=VALUE,...",
        help="start EM at these parameter values, in the data's units (e.g. theta=0.5,u=1; a "
        "vector as omega=[1,2]); parameters not named start from the model's default",
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
    """The parser of `sdessm` and its commands."""
    parser = _Parser(
        prog="sdessm",
        description=__doc__.splitlines()[0],
        epilog="`sdessm COMMAND --help` describes a command and its options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _parser(sub, "models", "list the model zoo").set_defaults(func=models)
    _add_data(sub)
    _add_simulate(sub)
    _add_fit(sub)
    _add_compare(sub)
    _add_sample(sub)
    return parser


def _add_demo(sub) -> None:
    p = _parser(sub, "demo", "simulate a zoo model, fit it by EM and NUTS, compare with the truth")
    p.add_argument("--model", default="damped_oscillator", help=_MODEL_HELP)
    p.add_argument("--out", default="demo-output", help="output folder")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    _add_simulation(p, n=400, dt=0.1, missing=0.1)
    p.add_argument("--num-timesteps", type=_count(2), dest="n", help=argparse.SUPPRESS)
    _add_nuts(p, warmup=500, draws=500)
    _add_em(p)
    p.set_defaults(func=demo, target_accept=0.8)


def _add_data(sub) -> None:
    p = _parser(sub, "data", "list the real data sets shipped with sdessm, or write one as CSV")
    p.add_argument("name", nargs="?", default=None, help="data set to write (omit to list them)")
    p.add_argument("--out", default=None, help="CSV file to write (default: NAME.csv)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=data_command)


def _add_simulate(sub) -> None:
    p = _parser(sub, "simulate", "simulate a model at its TRUE_PARAMS and write the data as CSV")
    p.add_argument("--model", default="damped_oscillator", help=_MODEL_HELP)
    _add_simulation(p, n=500, dt=0.1, missing=0.0)
    p.add_argument("--out", default="data.csv", help="CSV file to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=simulate_command)


def _add_fit(sub) -> None:
    text = "fit a model by EM to a CSV file (empty cells are missing values)"
    p = _add_data_file(sub, "fit", text, bands="bands at the EM estimate", resumes="")
    p.add_argument(
        "--objective",
        choices=("mle", "map"),
        default="mle",
        help="maximum likelihood, or the posterior mode under the model's priors",
    )
    _add_em(p)
    p.set_defaults(func=fit_command)


def _add_compare(sub) -> None:
    text = "fit several models by EM to a CSV file and choose one by BIC, saying why"
    p = _parser(sub, "compare", text)
    p.add_argument("data", help="CSV file with a header row; empty cells are missing values")
    p.add_argument(
        "--models",
        type=_model_list,
        required=True,
        metavar="MODEL,MODEL,...",
        help="the models to compare, comma-separated: zoo models (orders after colons, as "
        "carma:2 or carma:3:1) or model files of your own",
    )
    p.add_argument("--time-column", default="t", help="name of the time column")
    p.add_argument(
        "--columns", default=None, help="value columns, comma-separated (default: all others)"
    )
    _add_inputs(p, forecast=False)
    p.add_argument("--out", default="compare-output", help="output folder")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    p.add_argument(
        "--objective",
        choices=("mle", "map"),
        default="mle",
        help="maximum likelihood, or the posterior mode under each model's priors (the "
        "criteria use the log-likelihood at the estimate either way)",
    )
    _add_em(p, init=False)
    p.add_argument(
        "--nuts",
        action="store_true",
        help="also sample each certified fit by NUTS (started at its EM estimate) and compare "
        "the posteriors by PSIS-LOO",
    )
    _add_nuts(p, warmup=500, draws=500)
    p.add_argument("--seed", type=int, default=0, help="random seed of NUTS")
    p.set_defaults(func=compare_command)


def _add_sample(sub) -> None:
    text = "sample a model's posterior by NUTS given a CSV file"
    resumes = ", or to more --draws without a new warm-up"
    p = _add_data_file(sub, "sample", text, bands="posterior predictive bands", resumes=resumes)
    _add_nuts(p, warmup=1000, draws=1000)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--init-from-em",
        action="store_true",
        help="start every chain at the EM (MAP) estimate",
    )
    _add_em(p)
    p.set_defaults(func=sample_command)


def _add_data_file(sub, name: str, text: str, bands: str, resumes: str):
    """The parser of a command on a CSV file (`fit`, `sample`) with the options they share;
    `bands` says what the bands of `--forecast` are, `resumes` what `--checkpoint` resumes
    besides an interrupted run."""
    p = _parser(sub, name, text)
    p.add_argument("data", help="CSV file with a header row; empty cells are missing values")
    p.add_argument("--model", default="damped_oscillator", help=_MODEL_HELP)
    p.add_argument("--time-column", default="t", help="name of the time column")
    p.add_argument(
        "--columns", default=None, help="value columns, comma-separated (default: all others)"
    )
    _add_inputs(p, forecast=True)
    p.add_argument("--out", default=f"{name}-output", help="output folder")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    p.add_argument(
        "--forecast",
        type=_count(1),
        default=None,
        metavar="N",
        help="also forecast N steps (the data's median step) past the last row, with 95%% " + bands,
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="save the run in FILE as it goes; if FILE holds this run, continue from it "
        f"(after an interruption{resumes})",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the command line is an entry point: float64
    args = build_parser().parse_args(argv)
    try:
        if args.compilation_cache:  # before the command compiles anything
            from .cache import enable_compilation_cache

            enable_compilation_cache()
        return args.func(args)
    except Failed as err:
        return _fail(str(err), EXIT_FAILED)
    except FloatingPointError as err:  # a computation that left the valid region
        return _fail(f"the computation failed: {err}", EXIT_FAILED)
    except ValueError as err:  # the user's input: a message that names it
        return _fail(str(err))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written.", 130)


if __name__ == "__main__":
    sys.exit(main())
