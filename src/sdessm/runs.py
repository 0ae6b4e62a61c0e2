"""The steps that the commands of the command line share, from checking their input to writing
their results.

A command loads its model, reads its data and checks its `--out` before any work
(`load_model`, `read_data`, `check_out`); runs EM or NUTS with their warnings recorded; and
writes its results whole or not at all (`write_results`). A user error raises `ValueError`
(exit status 2), a computation that fails raises `Failed` (exit status 1). JAX, NumPyro and the
rest of sdessm are imported when a step needs them, so that bad arguments are answered first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import warnings
from pathlib import Path

#: Exit statuses: a user error, a computation that failed, and with `--strict` a run that ended
#: with a warning (its results written all the same).
EXIT_USAGE, EXIT_FAILED, EXIT_WARNINGS = 2, 1, 3


class Failed(Exception):
    """A computation that failed (not the user's input): exit status 1."""


def model_orders(spec: str, option: str = "--model") -> tuple[str, tuple[int, ...]]:
    """`(name, orders)` of a model as the command line names it: `carma:3:1` is
    `("carma", (3, 1))`; a plain name or a model file (a path) has no orders.

    Raises:
        ValueError: an order that is not a whole number (the message names `option`).

    Examples:
        >>> model_orders("carma:3:1"), model_orders("ou"), model_orders("my/model.py")
        (('carma', (3, 1)), ('ou', ()), ('my/model.py', ()))
    """
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return spec, ()
    name, *parts = spec.split(":")
    for part in parts:
        if not re.fullmatch(r"[+-]?\d+", part.strip()):
            raise ValueError(
                f"{option} {spec}: the orders after the model's name must be whole numbers, "
                f"as in carma:3 or carma:3:1; got {part!r}."
            )
    return name, tuple(int(part) for part in parts)


def resolve_model(spec: str, command: str, needs: tuple[str, ...] = (), option: str = "--model"):
    """`(module, model_kwargs)` of a model named on the command line (`model_orders`): the orders
    become the keyword arguments that the module's `ORDERS` names (an order not given is 0), checked
    by its `check_orders`; `needs` are the attributes the command uses.

    Raises:
        ValueError: an unknown model, orders on a model that takes none or too many of them,
            orders the model refuses, or an attribute of `needs` missing (each message names
            `option`).
    """
    from .models import load

    name, orders = model_orders(spec, option)
    module = load(name)
    kwargs = {}
    if orders:
        names = tuple(getattr(module, "ORDERS", ()))
        if not names:
            raise ValueError(f"{option} {spec}: the model {name} takes no orders; give {name}.")
        if len(orders) > len(names):
            raise ValueError(
                f"{option} {spec}: the model {name} takes at most {len(names)} orders "
                f"({', '.join(names)}); got {len(orders)}."
            )
        kwargs = dict(zip(names, orders + (0,) * (len(names) - len(orders)), strict=True))
        try:
            getattr(module, "check_orders", lambda **_: None)(**kwargs)
        except ValueError as err:
            raise ValueError(f"{option} {spec}: {err}") from None
    missing = [attr for attr in needs if not hasattr(module, attr)]
    if missing:
        raise ValueError(
            f"`sdessm {command}` needs {' and '.join(missing)} in the model file "
            f"{spec} (default parameter values and the map to SDEParams: see "
            "'Write your own model' in the documentation)."
        )
    if kwargs and "TRUE_PARAMS" in needs and not hasattr(module, "true_params"):
        raise ValueError(
            f"{option} {spec}: `sdessm {command}` simulates at TRUE_PARAMS, which hold for the "
            f"default orders of {name} only, and {name} has no true_params(...) for others."
        )
    return module, kwargs


def load_model(args: argparse.Namespace, needs: tuple[str, ...] = ()):
    """The model module named by `--model` (`resolve_model`), its orders kept as
    `args.model_kwargs`; `needs` are the attributes this command uses."""
    module, args.model_kwargs = resolve_model(args.model, args.command, needs)
    if hasattr(args, "inputs"):  # the commands that read data
        check_model_inputs(module, args.model, bool(args.inputs))
    return module


def load_models(args: argparse.Namespace) -> list:
    """`(name, module, model_kwargs)` of each model of `--models`, all checked before any work."""
    specs = [(spec, *resolve_model(spec, args.command, option="--models")) for spec in args.models]
    for spec, module, _ in specs:
        check_model_inputs(module, spec, bool(args.inputs))
    return specs


def true_params(args: argparse.Namespace, module) -> dict:
    """The parameter values to simulate the model of `--model` at: `TRUE_PARAMS`, or for orders
    given on the command line the module's `true_params(**orders)`."""
    kwargs = getattr(args, "model_kwargs", None)
    return module.true_params(**kwargs) if kwargs else module.TRUE_PARAMS


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files this run reads or keeps, which its output must never replace."""
    files = [getattr(args, "data", None), getattr(args, "checkpoint", None)]
    files.append(getattr(args, "future_inputs", None))
    for model in [getattr(args, "model", ""), *(getattr(args, "models", None) or [])]:
        if model.endswith(".py") or os.sep in model or "/" in model:
            files.append(model)
    return [f for f in files if f]


def check_out(args: argparse.Namespace, kind: str = "folder") -> None:
    """Refuse, before any work, an `--out` that would destroy what the user owns, or that cannot
    be written."""
    import tempfile

    from .outputs import check_output

    check_output(args.out, kind=kind, inputs=_inputs(args), force=args.force)
    parent = Path(args.out).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(f"cannot write --out {args.out}: {err.strerror or err}") from None


def read_data(args: argparse.Namespace):
    """`(times, y, names)` from the CSV file, checked for data no fit can use. The columns of
    `--inputs` are not data: they are kept, checked complete, as `args.input_values` `(T, m)`
    (None without `--inputs`) and passed to the model as its `inputs` (`args.model_kwargs`)."""
    from .io import check_data, read_csv

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    inputs = getattr(args, "inputs", None) or []
    both = sorted(set(columns or []) & set(inputs))
    if both:
        raise ValueError(f"{both} are named by both --columns and --inputs; a column is one or "
                         "the other.")  # fmt: skip
    times, table, names = read_csv(args.data, args.time_column, columns and columns + inputs)
    unknown = [c for c in inputs if c not in names]
    if unknown:
        raise ValueError(
            f"{args.data} has no column(s) {unknown} named by --inputs; its columns are "
            f"{[args.time_column, *names]}."
        )
    values = [i for i, name in enumerate(names) if name not in inputs]
    if not values:
        raise ValueError(f"{args.data}: every column besides the times is an input; no data.")
    args.input_values = None
    if inputs:
        v = table[:, [names.index(c) for c in inputs]]
        check_known_inputs(v, inputs, args.data)
        args.input_values = v
        if hasattr(args, "model_kwargs"):
            args.model_kwargs = {**(args.model_kwargs or {}), "inputs": v}
    y, names = table[:, values], [names[i] for i in values]
    check_data(times, y, names, args.data)
    return times, y, names


def check_known_inputs(v, names, path) -> None:
    """Inputs are known: an empty cell among them is an error naming its row and column."""
    import numpy as np

    empty = np.argwhere(np.isnan(v))
    if empty.size:
        row, col = (int(i) for i in empty[0])
        raise ValueError(
            f"{path}, row {row + 2}: the input column {names[col]!r} is empty; known inputs "
            "need a value at every time (fill the cell, or drop the row)."
        )


def forecast_plan(args: argparse.Namespace, times):
    """`(future times, future inputs)` of `--forecast N`: N steps of the data's median step;
    with `--inputs`, the first N rows of `--future-inputs` (its times and input columns).
    `(None, None)` without `--forecast`."""
    from .io import read_csv

    given = getattr(args, "future_inputs", None)
    if not args.forecast:
        if given:
            raise ValueError("--future-inputs applies with --forecast N (and --inputs).")
        return None, None
    if not getattr(args, "inputs", None):
        if given:
            raise ValueError("--future-inputs applies with --inputs: the model takes none.")
        return future_times(times, args.forecast), None
    if not given:
        raise ValueError(
            "--forecast with --inputs needs --future-inputs FILE: a CSV with the time column "
            f"{args.time_column!r} and the input columns {args.inputs} at the times to forecast."
        )
    future, v, _ = read_csv(given, args.time_column, args.inputs)
    n = args.forecast
    if len(future) < n:
        raise ValueError(
            f"--future-inputs {given} has {len(future)} rows; --forecast {n} needs {n}."
        )
    future, v = future[:n], v[:n]
    check_known_inputs(v, args.inputs, given)
    if future[0] <= times[-1]:
        raise ValueError(
            f"--future-inputs {given}: its first time {future[0]:g} is not after the data's last "
            f"time {times[-1]:g}."
        )
    return future, v


def check_model_inputs(module, name: str, given: bool) -> None:
    """A model driven by known inputs (its module names them, `INPUT_NAMES`) needs `--inputs`;
    a model whose function takes no `inputs` refuses them."""
    import inspect

    takes = "inputs" in inspect.signature(module.model).parameters
    if given and not takes:
        raise ValueError(
            f"model {name} takes no known inputs (its `model` has no `inputs` argument); drop "
            "--inputs, or use a driven model such as driven_ou."
        )
    if not given and hasattr(module, "INPUT_NAMES"):
        raise ValueError(
            f"model {name} is driven by known inputs: name their columns with --inputs (e.g. "
            f"--inputs {','.join(module.INPUT_NAMES)})."
        )


def future_times(times, n: int):
    """`n` times after the data, spaced by the data's median step (to 12 significant digits, so
    that round-off in the steps of decimal times does not show)."""
    import numpy as np

    from .io import decimal_grid

    if len(times) < 2:
        raise ValueError("--forecast needs at least two observation times to set its step.")
    step = float(f"{float(np.median(np.diff(times))):.12g}")
    return decimal_grid(float(times[-1]), step, n, first=1)


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


def em_with_warnings(args, module, times, y, objective: str, init=None):
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
                model_kwargs=getattr(args, "model_kwargs", None) or None,
            )
        except FloatingPointError as err:
            raise Failed(f"EM failed: {err}") from None
        except NotPSDError:
            raise Failed(
                "the diffusion Q recovered from the fit is not positive semi-definite: no SDE "
                "of this model fits the data at this step. Try --psd nearest (the nearest PSD "
                "Q, flagged in the results), or a model with fewer states."
            ) from None
        except NoRealLogarithmError as err:
            raise Failed(f"no SDE explains the fit: {err}") from None
    return em, _warning_lines(caught)


def compare_with_progress(args, specs, times, y, line):
    """EM of each model of `load_models` (`sdessm.comparison.fit_candidate`), a line printed per
    model (`line(candidate)`), then the choice (`sdessm.comparison.choose`).

    Raises:
        Failed: no model could be fitted (the message gives each reason).
    """
    import dataclasses

    from .comparison import choose, fit_candidate, loo_comparison, sample_candidate

    candidates = []
    for i, (spec, module, kwargs) in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] {spec}", flush=True)
        options = dict(objective=args.objective, num_iters=args.iters, psd=args.psd)
        fitted = fit_candidate(
            module.model, y, times, name=spec, model_kwargs=kwargs or None, **options
        )
        print(f"      {line(fitted)}", flush=True)
        candidates.append(fitted)
    loo = None
    if args.nuts:
        nuts = {**nuts_settings(args), "progress": True}
        for i, (c, (spec, module, kwargs)) in enumerate(zip(candidates, specs, strict=True)):
            if not c.converged:
                print(f"[NUTS {i + 1}/{len(specs)}] {spec}: not sampled (not certified)")
                continue
            print(f"[NUTS {i + 1}/{len(specs)}] {spec}", flush=True)
            posterior = sample_candidate(c, module.model, y, times, kwargs or None, nuts)
            candidates[i] = dataclasses.replace(c, posterior=posterior)
        loo = loo_comparison(candidates)
    result = choose(candidates, loo=loo)
    if result.choice is None:
        raise Failed(result.why)
    return result


def simulate_model(module, truth: dict, n: int, dt: float, missing: float, seed: int):
    """`(times, x, y, v)`: a model simulated at `truth`, a `missing` fraction of y NaN; `v` the
    inputs of a driven model (its `example_inputs(times)`), else None."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .io import decimal_grid
    from .simulate import simulate

    sde = module.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in truth.items()})
    times = decimal_grid(0.0, dt, n)
    v = None
    if hasattr(module, "example_inputs"):
        v = np.asarray(module.example_inputs(times), dtype=float)
    x, y = simulate(jax.random.key(seed), sde, times, inputs=v)
    x, y = np.asarray(x), np.array(y)
    y[np.random.default_rng(seed).uniform(size=y.shape) < missing] = np.nan
    return times, x, y, v


def nuts_settings(args) -> dict:
    """The settings of `fit_nuts` that the NUTS options of the command line give."""
    return dict(
        num_warmup=args.warmup,
        num_samples=args.draws,
        num_chains=args.chains,
        seed=args.seed,
        target_accept_prob=args.target_accept,
    )


def nuts_with_warnings(args, module, times, y, init, truth=None):
    """NUTS with its warnings recorded: `(ArviZ data, warning lines)`."""
    from .infer import fit_nuts

    with _recorded_warnings() as caught:
        idata = fit_nuts(
            module.model,
            y,
            times,
            init=init,
            truth=truth,
            checkpoint=getattr(args, "checkpoint", None),
            model_kwargs=getattr(args, "model_kwargs", None) or None,
            **nuts_settings(args),
        )
    return idata, _warning_lines(caught)


def write_results(args, files: dict, title: str, sections: list) -> None:
    """Write `files` (name -> str, Figure or ArviZ data) and report.html into `--out` at once."""
    from . import report
    from .outputs import OutputMoved, atomic_folder

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
        raise Failed(f"cannot write --out {args.out}: {err.strerror or err}") from None
    names = [*files, "report.html"]
    print(f"wrote {args.out}/: {', '.join(names)}")


def exit_status(args, notes) -> int:
    """0, or with `--strict` `EXIT_WARNINGS` when a note is a warning."""
    return EXIT_WARNINGS if args.strict and any(kind != "ok" for kind, _ in notes) else 0


def print_warnings(notes) -> None:
    """Print each note that is not "ok" as one warning line on stderr."""
    for kind, text in notes:
        if kind != "ok":
            print(f"sdessm: warning: {text}", file=sys.stderr)
