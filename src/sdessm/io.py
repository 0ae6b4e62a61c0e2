"""Data in, results out: CSV files, the checks on data before a fit, JSON, posterior draws.

Files are written atomically (`sdessm.outputs.atomic_path`, with the rest of the rules that
keep a user's files safe).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .outputs import atomic_path

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

    path = Path(path)
    names, frame = _read_table(path)
    columns = _value_columns(path, names, time_column, columns)
    if len(frame) == 0:
        raise ValueError(f"{path} has a header but no rows.")
    times = _numeric(path, frame, names, time_column)
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
    y = np.stack([_numeric(path, frame, names, c) for c in columns], axis=1)
    return times, y, list(columns)


def _read_table(path: Path):
    """The header's names (stripped) and the rows below it, every cell a string."""
    import pandas as pd

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
    return names, frame.iloc[1:]


def _value_columns(path: Path, names: list[str], time_column: str, columns):
    """The value columns to read (every column but the time column by default), checked
    against the header."""
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
    return columns


def _numeric(path: Path, frame, names: list[str], name: str):
    """Column `name` as floats, NaN for a missing cell; a ValueError naming the first cell that
    is not a number or is infinite."""
    import numpy as np
    import pandas as pd

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


def write_csv(path: str | os.PathLike, times, y, names, time_column: str = "t") -> None:
    """Write times and values (NaN as an empty cell) to `path` atomically.

    Every number is written in the shortest form that reads back as the same float64 (Python's
    `repr`), so `read_csv` returns exactly what was written.
    """
    import numpy as np

    y = np.asarray(y, dtype=float)
    lines = [",".join([time_column, *names])]
    for t, row in zip(np.asarray(times, dtype=float), y, strict=True):
        cells = ["" if np.isnan(v) else repr(float(v)) for v in row]
        lines.append(",".join([repr(float(t)), *cells]))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


#: The largest magnitude of a value or time sdessm accepts from a file: squares and sums of
#: squares over a long series must stay finite in float64 (max about 1.8e308).
MAX_ABS_VALUE = 1e100


def check_data(times, y, names, source: str = "the data") -> None:
    """Refuse data no fit can use, before any work: one line naming the cell or column.

    Raises:
        ValueError: no observed value at all; a column with no observed value; a value or a time
            whose magnitude exceeds `MAX_ABS_VALUE` (1e100), naming its row (as `read_csv`
            counts them: the header is row 1) and column.
    """
    import numpy as np

    times, y = np.asarray(times, dtype=float), np.asarray(y, dtype=float)
    observed = ~np.isnan(y)
    if not observed.any():
        raise ValueError(f"{source} has no observed value: every cell of {list(names)} is empty.")
    empty = [
        name for name, any_value in zip(names, observed.any(axis=0), strict=True) if not any_value
    ]
    if empty:
        kept = [n for n in names if n not in empty]
        raise ValueError(
            f"{source}: column {empty[0]!r} has no observed value; leave it out "
            f"(--columns {','.join(kept)})."
        )
    limit = f"the supported range is |value| <= {MAX_ABS_VALUE:g}; rescale it (e.g. divide by 1e6)"
    big = np.argwhere(np.abs(np.where(observed, y, 0.0)) > MAX_ABS_VALUE)
    if big.size:
        row, col = big[0]
        raise ValueError(
            f"{source}, row {row + 2}, column {names[col]!r}: {y[row, col]:g} is too large; "
            f"{limit}."
        )
    big = np.flatnonzero(np.abs(times) > MAX_ABS_VALUE)
    if big.size:
        raise ValueError(
            f"{source}, row {big[0] + 2}: time {times[big[0]]:g} is too large; {limit}."
        )


def describe_data(times, y, names) -> dict[str, str]:
    """What a report says about the data: rows, columns, missing share, time span and step."""
    import numpy as np

    times, y = np.asarray(times, dtype=float), np.asarray(y, dtype=float)
    missing = np.isnan(y)
    out = {"rows": str(len(times)), "columns": ", ".join(names)}
    share = f"{missing.mean():.1%} of {y.size} values"
    if missing.any() and len(names) > 1:
        share += (
            " ("
            + ", ".join(f"{n}: {m:.1%}" for n, m in zip(names, missing.mean(axis=0), strict=True))
            + ")"
        )
    out["missing"] = share
    out["time span"] = f"{times[0]:g} to {times[-1]:g} ({times[-1] - times[0]:g})"
    if len(times) > 1:
        steps = np.diff(times)
        if np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
            out["time step"] = f"uniform, {steps[0]:.12g}"
        else:
            out["time step"] = (
                f"irregular: median {np.median(steps):.6g}, from {steps.min():.6g} to "
                f"{steps.max():.6g}"
            )
    return out


def decimal_grid(start: float, step: float, n: int, first: int = 0):
    """`start + k * step` for `k = first, ..., first + n - 1`, each the float64 nearest to that
    decimal number, with `start` and `step` read as their shortest decimal forms.

    `np.arange(n) * 0.1` gives `0.30000000000000004` at k = 3; this gives `0.3`, which a CSV
    file then shows as it is.

    Examples:
        >>> decimal_grid(0.0, 0.1, 4).tolist()
        [0.0, 0.1, 0.2, 0.3]
        >>> decimal_grid(1990.5, 0.25, 2, first=1).tolist()
        [1990.75, 1991.0]
    """
    from decimal import Decimal

    import numpy as np

    a, h = Decimal(repr(float(start))), Decimal(repr(float(step)))
    exponent = min(a.as_tuple().exponent, h.as_tuple().exponent, 0)
    ia, ih = int(a.scaleb(-exponent)), int(h.scaleb(-exponent))
    ks = np.arange(first, first + n)
    if -exponent <= 22 and abs(ia) + abs(ih) * (first + n) < 2**53:
        # integers and 10^q (q <= 22) are exact doubles, so one division rounds correctly
        return (ia + ih * ks).astype(float) / float(10**-exponent)
    return np.array([float(a + h * int(k)) for k in ks])


def _plain(value):
    """`value` as JSON data: arrays as lists, NaN and infinities as None, complex as re/im."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__array__") or isinstance(value, np.generic):
        value = np.asarray(value)
        if value.ndim:
            return [_plain(v) for v in value]
        value = value.item()
    if isinstance(value, complex):
        return {"re": _plain(value.real), "im": _plain(value.imag)}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def json_text(value) -> str:
    """Strict JSON (no bare NaN or Infinity: undefined numbers are `null`), indented.

    Examples:
        >>> import numpy as np
        >>> json_text({"se": np.array([0.5, np.nan])}).split()
        ['{', '"se":', '[', '0.5,', 'null', ']', '}']
    """
    return json.dumps(_plain(value), indent=2, allow_nan=False) + "\n"


def posterior_draws(idata) -> dict:
    """Site name -> draws `(chain, draw, *shape)` as NumPy arrays, from the `posterior` group of
    ArviZ data (ArviZ 0.x `InferenceData` or 1.x `DataTree`)."""
    import numpy as np

    post = idata["posterior"]
    names = list(post.data_vars) if hasattr(post, "data_vars") else list(post.variables)
    return {k: np.asarray(post[k].values) for k in names if k not in ("chain", "draw")}
