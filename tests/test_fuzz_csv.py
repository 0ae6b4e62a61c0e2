"""Fuzzing `sdessm.io.read_csv`: arbitrary bytes, malformed tables and valid tables.

The contract (its docstring): `read_csv` returns `(times, y, names)` or raises `ValueError` with a
one-line message naming the problem; no other exception (pandas', IndexError, UnicodeError, ...)
and no warning escapes. A returned value has finite, strictly increasing float times, float
values of shape `(len(times), len(names))` with NaN for missing cells and no infinities.
"""

import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from sdessm.io import read_csv, write_csv

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    """One file, rewritten by every example (hypothesis forbids function-scoped fixtures)."""
    return tmp_path_factory.mktemp("fuzz") / "data.csv"


def _count(outcome):
    if currently_in_test_context():  # shown by pytest --hypothesis-show-statistics
        event(outcome)


def read_checked(path, time_column="t", columns=None):
    """`read_csv` under its contract: the result with its invariants checked, or None when it
    raised a one-line ValueError. Any other exception, and any warning, fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            times, y, names = read_csv(path, time_column, columns)
        except ValueError as err:
            message = str(err)
            assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
            assert not caught, [str(w.message) for w in caught]
            _count("ValueError")
            return None
    assert not caught, [str(w.message) for w in caught]
    assert isinstance(times, np.ndarray) and times.dtype == np.float64 and times.ndim == 1
    assert times.size >= 1
    assert np.all(np.isfinite(times))
    assert np.all(times[1:] > times[:-1])
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    assert time_column not in names or (columns is not None and time_column in columns)
    if columns is not None:
        assert names == list(columns)
    assert len(names) >= 1
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    assert y.shape == (times.size, len(names))
    assert not np.any(np.isinf(y))
    _count("read")
    return times, y, names


# ------------------------------------------------------------------------ (i) arbitrary bytes

TABLE_PREFIXES = [b"", b"t,y\n", b"t,y\n0,", b"\xef\xbb\xbft,y,z\r\n", b't,"y\n', b"t\n"]


@FUZZ
@given(
    prefix=st.sampled_from(TABLE_PREFIXES),
    body=st.binary(max_size=120),
    time_column=st.sampled_from(["t", "y", "", "\x00"]),
    columns=st.sampled_from([None, ["y"], ["y", "y"], ["t"], [], ["\udcff"]]),
)
@example(prefix=b"", body=b"\xff\xfe\x00\x81", time_column="t", columns=None)
@example(prefix=b"t,y\n", body=b"0,1\x00\n1,2\n", time_column="t", columns=None)
@example(prefix=b"", body="t,y\n0,1\n".encode("utf-16"), time_column="t", columns=None)
def test_arbitrary_bytes(csv_path, prefix, body, time_column, columns):
    csv_path.write_bytes(prefix + body)
    read_checked(csv_path, time_column, columns)


# ------------------------------------------------------------- (ii) structured but malformed

HEADER_NAMES = ["t", "y", "z", "", " ", " t", "t ", "y ", "Unnamed: 1", "y.1", "NA", "nan", "é"]
CELLS = [
    "0",
    "1",
    "-2.5",
    "+3",
    " 4 ",
    "",
    " ",
    "nan",
    "NaN",
    "-nan",
    "NA",
    "n/a",
    "null",
    "None",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "-1e999",
    "1e308",
    "1e-400",
    "5e-324",
    "123456789012345678901234567890",
    "abc",
    "True",
    '"1"',
    '"',
    '""',
    '"1,5"',
    "0x10",
    "1_0",
    "1.2.3",
    "\x00",
    "\t",
    "١٢",
]
plain_cell = st.one_of(
    st.sampled_from(["", "1", "-0.5", "2e3", "NA", "nan", " 7 "]),
    st.floats(-1e3, 1e3).map(repr),
    st.integers(-(10**6), 10**6).map(str),
)
cell = st.one_of(
    plain_cell,
    st.sampled_from(CELLS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=4),
)
header_name = st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=4))


@st.composite
def malformed_tables(draw):
    """A header, rows of random lengths and cells, then line endings, BOM and encoding.

    Half of the tables are nearly valid (plain names and cells, one defect at most), so that
    reads that succeed are fuzzed too, not only the errors.
    """
    plain = draw(st.booleans())
    width = draw(st.integers(1, 4))
    if plain:
        header = ["t", *draw(st.permutations(["a", "b", "c"]))[: width - 1]]
        if width > 1 and draw(st.booleans()):
            header[-1] = draw(header_name)
    else:
        header = draw(st.lists(header_name, min_size=width, max_size=width))
    num_rows = draw(st.integers(0, 6))
    increasing = plain or draw(st.booleans())  # a well-formed first column: more tables parse
    lengths = [width] * 6 + [0, width - 1, width + 1]
    rows = []
    for k in range(num_rows):
        length = width if plain and k else draw(st.sampled_from(lengths))
        cells = draw(st.lists(plain_cell if plain else cell, min_size=length, max_size=length))
        if increasing and cells:
            cells[0] = str(k)
        rows.append(cells)
    sep = "," if plain else draw(st.sampled_from([",", ",", ", ", ";", "\t"]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = newline.join(sep.join(r) for r in [header, *rows])
    if draw(st.booleans()):
        text += newline
    encodings = ["utf-8", "utf-8-sig"] + ([] if plain else ["utf-8", "latin-1", "utf-16"])
    encoding = draw(st.sampled_from(encodings))
    data = text.encode(encoding, errors="surrogateescape" if encoding == "utf-8" else "replace")
    if not plain and draw(st.booleans()):  # a stray byte somewhere: often invalid UTF-8
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=2)) + data[at:]
    choices = sorted(set(header) | {"t", "y", "missing"})
    time_column = "t" if plain else draw(st.sampled_from(choices))
    columns = draw(st.none() | st.lists(st.sampled_from(choices), max_size=3))
    return data, time_column, columns


@settings(FUZZ, max_examples=400)
@given(table=malformed_tables())
@example(table=(b"t,y\n0,1,2\n1,2,3\n", "t", None))  # every row one cell longer than the header
@example(table=(b"t,y,y\n0,1,2\n1,2,3\n", "t", ["y"]))  # which y?
@example(table=(b"t,t\n0,1\n1,2\n", "t", None))  # a second time column
@example(table=(b"t,\n0,1\n1,2\n", "t", None))  # a value column with no name
@example(table=(b"t,y\n-1e308,1\n1e308,2\n", "t", None))  # the step overflows
@example(table=(b"t,y\n0,1\n1e400,2\n", "t", None))  # an infinite time
def test_malformed_tables(csv_path, table):
    data, time_column, columns = table
    csv_path.write_bytes(data)
    read_checked(csv_path, time_column, columns)


def test_rows_longer_than_the_header_are_an_error(csv_path):
    """pandas would read the first column as an index and shift every value by one column."""
    csv_path.write_bytes(b"t,y\n0,1,2\n1,2,3\n")
    with pytest.raises(ValueError, match="Expected 2 fields in line 2, saw 3"):
        read_csv(csv_path)


@pytest.mark.parametrize(
    "content, columns, message",
    [
        ("t,y,y\n0,1,2\n1,2,3\n", None, "column 'y' appears 2 times"),
        ("t,y,y\n0,1,2\n1,2,3\n", ["y"], "column 'y' appears 2 times"),
        ("t,t\n0,1\n1,2\n", None, "column 't' appears 2 times"),
        ("t, y ,y\n0,1,2\n1,2,3\n", None, "column 'y' appears 2 times"),
        ("t,\n0,1\n1,2\n", None, "column 2 of the header has no name"),
    ],
)
def test_ambiguous_headers_are_an_error(csv_path, content, columns, message):
    csv_path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_csv(csv_path, "t", columns)


def test_unselected_unnamed_or_repeated_columns_are_ignored(csv_path):
    csv_path.write_text("t,y,,z,z\n0,1,,a,b\n1,2,,c,d\n")
    times, y, names = read_csv(csv_path, "t", ["y"])
    assert names == ["y"] and times.tolist() == [0.0, 1.0] and y.tolist() == [[1.0], [2.0]]


def test_header_names_are_stripped(csv_path):
    csv_path.write_text(" t , y \n0,1\n1,2\n")
    times, y, names = read_csv(csv_path)
    assert names == ["y"] and y.tolist() == [[1.0], [2.0]]


def test_huge_times_do_not_overflow(csv_path):
    csv_path.write_text("t,y\n-1e308,1\n1e308,2\n")
    times, _, _ = read_checked(csv_path)
    assert times.tolist() == [-1e308, 1e308]


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root reads files without permission"
)
def test_unreadable_file_is_a_value_error(csv_path):
    csv_path.write_text("t,y\n0,1\n")
    csv_path.chmod(0)
    try:
        with pytest.raises(ValueError, match="cannot read .*Permission denied"):
            read_csv(csv_path)
    finally:
        csv_path.chmod(0o644)


def test_read_errors_of_the_system_are_a_value_error(csv_path, monkeypatch):
    """The same for any OSError while reading (this one runs as root too)."""
    import pandas as pd

    def failing_read(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    csv_path.write_text("t,y\n0,1\n")
    monkeypatch.setattr(pd, "read_csv", failing_read)
    with pytest.raises(ValueError, match="cannot read .*Permission denied"):
        read_csv(csv_path)


def test_a_folder_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_csv(tmp_path)


# ------------------------------------------------------------------------ (iii) valid tables

finite = st.floats(allow_nan=False, allow_infinity=False)
value = st.one_of(finite, st.just(math.nan), st.sampled_from([0.0, -0.0, 5e-324, 1e308]))
name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,6}", fullmatch=True)


@st.composite
def valid_tables(draw):
    T = draw(st.integers(1, 8))
    times = sorted(draw(st.lists(finite, min_size=T, max_size=T, unique=True)))
    time_column = draw(name)
    names = draw(
        st.lists(name.filter(lambda n: n != time_column), min_size=1, max_size=4, unique=True)
    )
    p = len(names)
    y = draw(st.lists(st.lists(value, min_size=p, max_size=p), min_size=T, max_size=T))
    return np.array(times), np.array(y, dtype=float).reshape(T, p), names, time_column


@settings(FUZZ, max_examples=100)
@given(table=valid_tables())
@example(table=(np.array([0.0]), np.array([[math.nan]]), ["NA"], "t"))  # all missing
def test_write_then_read_round_trips(csv_path, table):
    times, y, names, time_column = table
    write_csv(csv_path, times, y, names, time_column)
    got = read_checked(csv_path, time_column)
    assert got is not None, "a table written by write_csv must read back"
    t_got, y_got, names_got = got
    assert names_got == names
    np.testing.assert_array_equal(t_got, times)
    np.testing.assert_array_equal(np.isnan(y_got), np.isnan(y))
    np.testing.assert_array_equal(y_got, y)  # exact: repr round-trips floats


MISSING_SPELLINGS = ["", "nan", "NaN", "NAN", "NA", "na", "n/a", "N/A", "null", "NULL"]


@st.composite
def formatted_tables(draw):
    """Valid tables with the cosmetic freedom of hand-made files: how numbers and missing
    cells are spelled, spaces, quotes, line endings, a BOM, a selection of columns."""
    T = draw(st.integers(1, 6))
    p = draw(st.integers(1, 3))
    steps = draw(st.lists(st.floats(1e-3, 1e3), min_size=T, max_size=T))
    times = np.cumsum(steps) - draw(st.floats(0, 100))
    y = np.array(draw(st.lists(value, min_size=T * p, max_size=T * p))).reshape(T, p)

    def spell(v):
        if math.isnan(v):
            text = draw(st.sampled_from(MISSING_SPELLINGS))
        else:
            text = draw(st.sampled_from([repr(float(v)), f"{v:.17g}", f"{v:.17e}"]))
        text = draw(st.sampled_from(["", " ", "  "])) + text + draw(st.sampled_from(["", " "]))
        return f'"{text}"' if draw(st.booleans()) and text == text.lstrip() else text

    names = [f"y{j}" for j in range(p)]
    lines = [",".join(["t", *names])] + [
        ",".join([spell(t), *(spell(v) for v in row)]) for t, row in zip(times, y, strict=True)
    ]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = draw(st.sampled_from(["", "\ufeff"])) + newline.join(lines) + newline
    columns = draw(st.none() | st.permutations(names))
    return text.encode(), times, y, names, columns


@settings(FUZZ, max_examples=100)
@given(table=formatted_tables())
def test_formatted_tables_read_exactly(csv_path, table):
    data, times, y, names, columns = table
    csv_path.write_bytes(data)
    got = read_checked(csv_path, "t", columns)
    assert got is not None, data
    t_got, y_got, names_got = got
    order = [names.index(c) for c in (names if columns is None else columns)]
    assert names_got == [names[j] for j in order]
    np.testing.assert_array_equal(t_got, times)
    np.testing.assert_array_equal(y_got, y[:, order])
