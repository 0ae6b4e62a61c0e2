"""Results out: every file is written atomically (a temporary file beside it, then a rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    If the body raises, the temporary file is removed and `path` is left as it was, so a reader
    never sees a half-written file.

    Examples:
        >>> import pathlib, tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path`.

    An existing `path` is moved aside first and removed only after the new folder is in place, so
    `path` is at every moment either the old complete folder or the new complete one (between the
    two renames it is briefly absent). If the body raises, the temporary folder is removed and
    `path` is left as it was.

    Raises:
        OSError: the parent folder cannot be created or written.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_MISSING = {"", "nan", "na", "n/a", "null"}


def read_csv(path: str | os.PathLike, time_column: str = "t", columns=None):
    """Observation times and values from a CSV file with a header row.

    Empty cells (and `NaN`, `NA`, `null`) in the value columns are missing observations; the time
    column must be complete, finite and strictly increasing (irregular steps are fine). Spaces
    around header names and cells are ignored; a row shorter than the header has missing cells.

    Args:
        path: the CSV file.
        time_column: the name of the time column.
        columns (Sequence[str] | None): the value columns, in order (default: every other
            column).

    Returns:
        (tuple[ndarray, ndarray, list[str]]): `(times, y, names)`: times `(T,)`, values
            `(T, p)` with NaN for missing cells, and the names of the value columns.

    Raises:
        ValueError: a missing or unreadable file, a row longer than the header, an unknown
            column, a selected column named twice or a value column with no name, a cell that
            is not a number (naming its row and column), infinite values, or times that are
            missing or do not increase.
    """
    import numpy as np
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist.")
    try:
        # header=None: the header is read as a row, so that pandas neither renames repeated or
        # empty names ("y.1", "Unnamed: 1") nor takes the first column of rows one cell longer
        # than the header as an index (which would shift every value by one column)
        frame = pd.read_csv(
            path, header=None, dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read {path} as CSV: {reason}") from None
    names = [str(c).strip() for c in frame.iloc[0]]
    frame = frame.iloc[1:]
    if time_column not in names:
        raise ValueError(f"{path} has no time column {time_column!r}; its columns are {names}.")
    if columns is None:
        unnamed = [j for j, c in enumerate(names) if not c and c != time_column]
        if unnamed:
            raise ValueError(
                f"{path}: column {unnamed[0] + 1} of the header has no name; name it or choose "
                "the value columns."
            )
        columns = [c for c in names if c != time_column]
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise ValueError(f"{path} has no column(s) {unknown}; its columns are {names}.")
    for c in dict.fromkeys([time_column, *columns]):
        if names.count(c) > 1:
            raise ValueError(
                f"{path}: column {c!r} appears {names.count(c)} times in the header; "
                "which one is meant is ambiguous."
            )
    if not columns:
        raise ValueError(f"{path} has no value columns besides the time column {time_column!r}.")
    if len(frame) == 0:
        raise ValueError(f"{path} has a header but no rows.")

    def numeric(name: str) -> np.ndarray:
        cells = frame[names.index(name)].astype(str).str.strip()
        missing = cells.str.lower().isin(_MISSING)
        values = pd.to_numeric(cells.where(~missing, "nan"), errors="coerce").to_numpy(float)
        bad = np.flatnonzero(np.isnan(values) & ~missing.to_numpy())
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"{path}, row {row + 2}, column {name!r}: {cells.iloc[row]!r} is not a number."
            )
        if np.isinf(values).any():
            row = int(np.flatnonzero(np.isinf(values))[0])
            raise ValueError(f"{path}, row {row + 2}, column {name!r}: infinite value.")
        return values

    times = numeric(time_column)
    if np.isnan(times).any():
        row = int(np.flatnonzero(np.isnan(times))[0])
        raise ValueError(f"{path}, row {row + 2}: the time column {time_column!r} is empty.")
    stalls = np.flatnonzero(times[1:] <= times[:-1])  # not np.diff: its steps may overflow
    if stalls.size:
        row = int(stalls[0]) + 1
        raise ValueError(
            f"{path}, row {row + 2}: time {times[row]:g} does not increase on the previous "
            f"{times[row - 1]:g}; times must be strictly increasing."
        )
    y = np.stack([numeric(c) for c in columns], axis=1)
    return times, y, list(columns)


def write_csv(path: str | os.PathLike, times, y, names, time_column: str = "t") -> None:
    """Write times and values (NaN as an empty cell) to `path` atomically."""
    import numpy as np

    y = np.asarray(y, dtype=float)
    lines = [",".join([time_column, *names])]
    for t, row in zip(np.asarray(times, dtype=float), y, strict=True):
        cells = ["" if np.isnan(v) else repr(float(v)) for v in row]
        lines.append(",".join([repr(float(t)), *cells]))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
