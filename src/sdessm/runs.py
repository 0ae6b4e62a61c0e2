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
import sys
import warnings
from pathlib import Path

#: Exit statuses: a user error, a computation that failed, and with `--strict` a run that ended
#: with a warning (its results written all the same).
EXIT_USAGE, EXIT_FAILED, EXIT_WARNINGS = 2, 1, 3


class Failed(Exception):
    """A computation that failed (not the user's input): exit status 1."""


def load_model(args: argparse.Namespace, needs: tuple[str, ...] = ()):
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
    """`(times, y, names)` from the CSV file, checked for data no fit can use."""
    from .io import check_data, read_csv

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    times, y, names = read_csv(args.data, args.time_column, columns)
    check_data(times, y, names, args.data)
    return times, y, names


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


def nuts_with_warnings(args, module, times, y, init, truth=None):
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
