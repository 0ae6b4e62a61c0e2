"""Execute the notebooks kept as jupytext percent scripts and write them as .ipynb.

    python notebooks/execute.py [--out docs/notebooks] [--jobs 2] [names...]

Every `notebooks/*.py` that carries a jupytext header is a notebook (this script is not). Each is
converted with jupytext, executed with nbclient in a fresh temporary working directory by a
kernel of the interpreter running this script, and written to `OUT/<name>.ipynb` atomically
(a temporary file in OUT, then `os.replace`). Notebooks run in parallel worker processes; one
line per notebook reports its wall time. The exit status is 1 if any notebook fails (a cell
raises, times out, or the kernel dies); the failing notebook, cell and error are printed, and
its earlier output file, if any, is left as it was. Exit status 2: a name that is not a notebook.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import multiprocessing
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "docs" / "notebooks"
CELL_TIMEOUT_S = 300
KERNEL_NAME = "python3"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def is_notebook(path: Path) -> bool:
    """Whether `path` starts with a jupytext header (`# ---`, `# jupyter:`, `#   jupytext:`)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if not lines or lines[0].strip() != "# ---":
        return False
    for line in lines[1:60]:
        if line.strip() == "# ---":
            return False
        if line.strip() == "#   jupytext:":
            return True
    return False


def find_notebooks(names: list[str]) -> tuple[list[Path], list[str]]:
    """The notebooks to run (all, or the named ones) and the names that are not notebooks."""
    found = {p.stem: p for p in sorted(HERE.glob("*.py")) if p != Path(__file__).resolve()}
    found = {stem: p for stem, p in found.items() if is_notebook(p)}
    if not names:
        return list(found.values()), []
    chosen, unknown = [], []
    for name in names:
        stem = Path(name).stem
        if stem in found:
            chosen.append(found[stem])
        else:
            unknown.append(name)
    return list(dict.fromkeys(chosen)), unknown


# --------------------------------------------------------------------------- the kernel


def _launches_this_interpreter(argv0: str) -> bool:
    """Whether a kernelspec's `argv[0]` starts `sys.executable`: jupyter_client replaces a bare
    `python`, `python3` or `python3.X` by `sys.executable`; a path must name the same file in
    the same folder (a virtual environment is its folder, not the file its link points to)."""
    major, minor = sys.version_info[:2]
    if argv0 in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True
    try:
        same_file = os.path.samefile(argv0, sys.executable)
    except OSError:
        return False
    same_dir = os.path.dirname(os.path.abspath(argv0)) == os.path.dirname(sys.executable)
    return same_file and same_dir


def kernel_manager_class():
    """A kernel manager class whose `python3` kernel runs this interpreter.

    The registered `python3` kernelspec is used when it starts `sys.executable`; otherwise a
    kernelspec manager that sees no registered kernels serves ipykernel's native spec, which is
    `[sys.executable, "-m", "ipykernel_launcher", ...]`.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    try:
        argv = KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv
    except NoSuchKernel:
        argv = []
    if argv and _launches_this_interpreter(argv[0]):
        return AsyncKernelManager

    class ThisInterpreterKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)

    return ThisInterpreterKernelManager


async def _check_kernel_interpreter(client) -> None:
    """Ask the started kernel for `sys.executable` and `sys.prefix`; they must be ours."""
    expressions = {key: f"__import__('sys').{key}" for key in ("executable", "prefix")}
    msg_id = client.kc.execute("", silent=True, store_history=False, user_expressions=expressions)
    reply = await client.async_wait_for_reply(msg_id)
    got = {}
    for key, value in reply["content"].get("user_expressions", {}).items():
        if value.get("status") == "ok":
            got[key] = ast.literal_eval(value["data"]["text/plain"])
    expected = {"executable": sys.executable, "prefix": sys.prefix}
    if got != expected:
        raise RuntimeError(f"the kernel runs {got}, not this interpreter {expected}")


# --------------------------------------------------------------------------- one notebook


def _failing_cell(nb) -> tuple[int, str]:
    """(index among all cells, first source line) of the first code cell with an error output."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.output_type == "error" for o in cell.outputs):
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            return index, first.strip()
    return -1, ""


def _tail(path: Path, lines: int = 30) -> str | None:
    """The last lines of the kernel's stderr, without ipykernel's notice about TCP transport."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    text = [line for line in text if "running over TCP without encryption" not in line][-lines:]
    return "kernel stderr (last lines):\n" + "\n".join(text) if text else None


def _write_atomically(nb, path: Path) -> None:
    import nbformat

    from sdessm.outputs import atomic_path

    with atomic_path(path) as tmp:
        nbformat.write(nb, str(tmp))


def run_notebook(path: str, out: str) -> dict:
    """Convert, execute and write one notebook; returns what happened (never raises)."""
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    name = Path(path).stem
    clock = time.perf_counter()
    result = {"name": name, "ok": False, "error": None, "detail": None, "path": None}
    try:
        nb = jupytext.read(path)
        with tempfile.TemporaryDirectory(prefix=f"nb-{name}-") as tmp:
            workdir = Path(tmp) / "work"  # the kernel's working directory, empty at the start
            workdir.mkdir()
            client = NotebookClient(
                nb,
                timeout=CELL_TIMEOUT_S,
                kernel_name=KERNEL_NAME,
                kernel_manager_class=kernel_manager_class(),
                resources={"metadata": {"path": str(workdir)}},
                record_timing=False,
            )

            async def on_start(**_):
                await _check_kernel_interpreter(client)

            client.on_notebook_start = on_start
            log = Path(tmp) / "kernel-stderr.log"  # the kernel process's own stderr
            try:
                with open(log, "w") as stderr:
                    client.execute(stderr=stderr)
            except CellExecutionError as err:
                index, first = _failing_cell(nb)
                where = f"cell {index} ({first!r})" if index >= 0 else "a cell"
                result["error"] = f"{where}: {err.ename}: {err.evalue}"
                result["detail"] = ANSI.sub("", str(err))
                return result
            except Exception as err:  # a timeout, a dead kernel: the kernel's stderr may say why
                result["error"] = f"{type(err).__name__}: {err}"
                result["detail"] = _tail(log)
                return result
        target = Path(out) / f"{name}.ipynb"
        _write_atomically(nb, target)
        result.update(ok=True, path=str(target))
    except Exception as err:  # a notebook jupytext cannot read, an output folder not writable
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        result["seconds"] = time.perf_counter() - clock
    return result


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default: 2)")
    args = parser.parse_args(argv)

    notebooks, unknown = find_notebooks(args.names)
    if unknown:
        known = sorted(p.stem for p in find_notebooks([])[0])
        print(f"execute.py: not a notebook: {', '.join(unknown)} (known: {known})", file=sys.stderr)
        return 2
    if not notebooks:
        print("execute.py: no notebooks found", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"executing {len(notebooks)} notebook(s) with {sys.executable} into {out}/",
        flush=True,
    )

    clock = time.perf_counter()
    failures = []
    context = multiprocessing.get_context("spawn")
    jobs = max(1, min(args.jobs, len(notebooks)))
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(run_notebook, str(p), str(out)) for p in notebooks]
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            if r["ok"]:
                print(f"ok    {r['name']:<20} {r['seconds']:6.1f} s  -> {r['path']}", flush=True)
            else:
                print(f"FAIL  {r['name']:<20} {r['seconds']:6.1f} s  {r['error']}", flush=True)
                failures.append(r)
    print(
        f"{len(notebooks) - len(failures)} of {len(notebooks)} notebooks ran in "
        f"{time.perf_counter() - clock:.1f} s",
        flush=True,
    )
    for r in failures:
        print(f"\n---- {r['name']}: {r['error']}", file=sys.stderr)
        if r["detail"]:
            print(r["detail"], file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
