"""Safe output folders and atomic files: sdessm never destroys what a user owns.

Results are written atomically: a file or folder is built under a temporary name beside its
destination and moved into place by one rename, so a reader never sees it half-written. An
existing output folder is replaced only if sdessm wrote it (it holds the manifest
`sdessm-output.json` and nothing the manifest does not list), and the swap of old and new is one
atomic exchange where the operating system offers it (Linux `renameat2`, macOS `renamex_np`).
Temporary names are handed to a small cleanup process before they are created; it outlives
this one, so whatever way the process ends (an exception, Ctrl-C, `kill -9`), no temporary file
or folder is left beside the destination.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

#: The manifest sdessm writes into every output folder; it marks the folder as sdessm's own.
MANIFEST = "sdessm-output.json"


class OutputRefused(ValueError):
    """sdessm will not write to this path: it is an input, the current folder, or something
    sdessm did not write (a file, a folder of the user's)."""


class OutputMoved(OutputRefused):
    """The destination became something sdessm may not replace while the results were being
    computed; they were saved whole at `path` instead."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree, if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# The cleanup process: reads "+<hex path>" (remove at exit), "-<hex path>" (forget) and
# "R<hex old> <hex dest>" (at exit, put old back at dest if dest is missing, else remove old)
# lines from a pipe; when the pipe closes (this process ended, however), it carries them out.
_JANITOR = r"""
import os, shutil, signal, sys
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
todo = {}
for line in sys.stdin.buffer:
    op, args = line[:1], [bytes.fromhex(a.decode()) for a in line[1:].split()]
    if op == b"-":
        todo.pop(args[0], None)
    elif args:
        todo[args[0]] = args[1] if op == b"R" else None
for path, dest in todo.items():
    try:
        if dest is not None and not os.path.lexists(dest) and os.path.lexists(path):
            os.rename(path, dest)
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass
"""


class _Janitor:
    """One cleanup process per sdessm process, started on first use."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        atexit.register(self._close)

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _JANITOR],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # a kill of our process group spares it
                )
            self._proc.stdin.write(line.encode("ascii") + b"\n")
            self._proc.stdin.flush()  # in the pipe before the path is created

    def _close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.stdin.close()
                self._proc.wait()
            self._proc = None

    def remove_at_exit(self, path: Path) -> None:
        self._send("+" + os.fsencode(path).hex())

    def restore_at_exit(self, old: Path, dest: Path) -> None:
        self._send("R" + os.fsencode(old).hex() + " " + os.fsencode(dest).hex())

    def forget(self, path: Path) -> None:
        self._send("-" + os.fsencode(path).hex())


_janitor = _Janitor()


@contextlib.contextmanager
def _temporary(path: Path, suffix: str, make) -> Iterator[Path]:
    """A fresh name beside `path`, handed to the cleanup process, then created by `make`; removed
    when the body ends whatever happens (it is gone already if the body renamed it)."""
    path = Path(os.path.abspath(path))  # the cleanup process may not share our working folder
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        _janitor.remove_at_exit(tmp)
        try:
            make(tmp)
            break
        except FileExistsError:
            _janitor.forget(tmp)
    try:
        yield tmp
    finally:
        _remove(tmp)
        _janitor.forget(tmp)


def _new_file(tmp: Path) -> None:
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask()))


def _new_folder(tmp: Path) -> None:
    os.mkdir(tmp, 0o777 & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    If the body raises, or the process is killed, the temporary file is removed and `path` is
    left as it was, so a reader never sees a half-written file. `path` is replaced whatever it
    holds: check first (`check_output`) where it may be a user's file.

    Examples:
        >>> import pathlib, tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    with _temporary(path, ".tmp", _new_file) as tmp:
        yield tmp
        os.replace(tmp, path)


def _exchange_function():
    """The C function that swaps two paths atomically, as `swap(a, b) -> 0 or -1`, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        return lambda a, b: libc.renameat2(at_fdcwd, a, at_fdcwd, b, rename_exchange)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        return lambda a, b: libc.renamex_np(a, b, rename_swap)
    return None


_swap = _exchange_function()


def _replace_folder(new: Path, dest: Path) -> Path | None:
    """Put folder `new` at `dest`; return where the old `dest` now lies (to be removed)."""
    if not os.path.lexists(dest):
        try:
            os.rename(new, dest)  # also replaces an empty folder created meanwhile
            return None
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _swap is not None and _swap(os.fsencode(new), os.fsencode(dest)) == 0:
        return new  # new (still handed to the cleanup process) now holds the old folder
    code = ctypes.get_errno() if _swap is not None else errno.ENOSYS
    if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 0):
        raise OSError(code, os.strerror(code), str(dest))
    # no atomic exchange here: two renames, and the old folder is put back if we die between
    old = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.old"
    _janitor.restore_at_exit(old, dest)
    try:
        os.rename(dest, old)
        os.rename(new, dest)
    except OSError:
        if os.path.lexists(old) and not os.path.lexists(dest):
            os.rename(old, dest)
        _janitor.forget(old)
        raise
    return old


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path`, with a manifest.

    The folder written gets `sdessm-output.json` (`MANIFEST`): sdessm's version and the files it
    wrote; an existing `path` is replaced only if it is such a folder with nothing else in it,
    or empty (`check_output`, checked again before the swap), unless `force`. Old and new are
    swapped in one atomic exchange where the system offers it, so `path` is at every moment
    either the old complete folder or the new complete one. If the body raises, or the process
    is killed at any point, no temporary folder is left and `path` is as it was.

    Raises:
        OutputRefused: `path` holds something sdessm did not write (and not `force`).
        OSError: the parent folder cannot be created or written.
    """
    path = Path(os.path.abspath(path))
    check = functools.partial(
        check_output, path, force=force, option="output folder", force_hint="force=True"
    )
    check()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(path, ".tmp", _new_folder) as tmp:
        yield tmp
        _write_manifest(tmp)
        try:
            check()  # the destination may have changed meanwhile
        except OutputRefused as err:
            aside = _free_name(path)
            os.rename(tmp, aside)
            raise OutputMoved(f"{err} The results were saved whole in {aside}.", aside) from None
        old = _replace_folder(tmp, path)
        if old is not None and old != tmp:
            _remove(old)
            _janitor.forget(old)


def _free_name(path: Path) -> Path:
    """`path-2`, `path-3`, ...: the first that does not exist."""
    n = 2
    while os.path.lexists(path.with_name(f"{path.name}-{n}")):
        n += 1
    return path.with_name(f"{path.name}-{n}")


def _write_manifest(folder: Path) -> None:
    from . import __version__

    files = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST)
    manifest = {"written_by": "sdessm", "version": __version__, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def foreign_entries(folder: str | os.PathLike) -> list[str] | None:
    """What in `folder` sdessm did not write: None when `folder` is not an sdessm output folder
    at all (no valid manifest, and not empty), else the names the manifest does not list."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return []
    if MANIFEST not in names:
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = set(manifest["files"]) if manifest.get("written_by") == "sdessm" else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = None
    if listed is None:
        return None
    return [n for n in names if n != MANIFEST and (n not in listed or (folder / n).is_dir())]


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_output(
    path: str | os.PathLike,
    *,
    kind: str = "folder",
    inputs: Sequence[str | os.PathLike] = (),
    force: bool = False,
    option: str = "--out",
    force_hint: str = "--force",
) -> None:
    """Refuse, before any work, an output path whose writing would destroy what a user owns.

    Never written, even with `force`: an input (or a folder holding one), the current folder
    or a folder above it, the home folder. Written only with `force`: an existing file, a link,
    and (for `kind="folder"`) a non-empty folder that sdessm did not write, or an sdessm folder
    to which other files were added. Always fine: a new path, an empty folder, an sdessm output
    folder as sdessm left it (`kind="folder"`).

    Args:
        path: where the output goes.
        kind: `"folder"` (a results folder) or `"file"` (one file, e.g. a CSV).
        inputs: files the run reads (data, model, checkpoint).
        force: replace a file or folder of the user's that is not an input.
        option: how the user named the path, for the message.
        force_hint: how the user asks for `force`, for the message.

    Raises:
        OutputRefused: one line saying why and what to do instead.
        ValueError: `kind` is neither "folder" nor "file".
    """
    if kind not in ("folder", "file"):
        raise ValueError(f"`kind` must be 'folder' or 'file'; got {kind!r}.")
    given = os.fspath(path)
    target = Path(os.path.abspath(given))
    real = Path(os.path.realpath(given))
    for item in inputs:
        source = Path(os.path.realpath(os.fspath(item)))
        if _contains(real, source) or _contains(target, Path(os.path.abspath(os.fspath(item)))):
            what = "is" if source == real else "holds"
            raise OutputRefused(
                f"{option} {given} {what} the input {os.fspath(item)}; sdessm never replaces its "
                f"input: choose another {option}."
            )
    here = Path(os.path.realpath(os.getcwd()))
    if _contains(real, here) or real == Path(os.path.realpath(Path.home())):
        where = "the current folder" if real == here else "a folder holding the current folder"
        if real == Path(os.path.realpath(Path.home())) and real != here:
            where = "your home folder"
        raise OutputRefused(
            f"{option} {given} is {where}; sdessm writes results into a folder of their own: "
            f"choose a new name, e.g. {option} results."
        )
    if not os.path.lexists(target) or force:
        return
    again = f"choose another {option}, or pass {force_hint} to replace it"
    if target.is_symlink():
        raise OutputRefused(f"{option} {given} is a link; {again}.")
    if not target.is_dir():
        raise OutputRefused(f"{option} {given} is an existing file; {again}.")
    if kind == "file":
        raise OutputRefused(f"{option} {given} is a folder; choose a file name for {option}.")
    try:
        foreign = foreign_entries(target)
    except OSError as err:
        raise OutputRefused(f"cannot read {option} {given}: {err.strerror or err}") from None
    if foreign is None:
        raise OutputRefused(
            f"{option} {given} is a folder that sdessm did not write; {again} and everything in it."
        )
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise OutputRefused(
            f"{option} {given} holds {shown}, which sdessm did not write; move "
            f"{'it' if len(foreign) == 1 else 'them'} out or {again}."
        )
