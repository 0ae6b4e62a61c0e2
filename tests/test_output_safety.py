"""Nothing a user owns is replaced: `check_output`, `atomic_folder`, `atomic_path`, and a process
killed while it writes."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdessm.outputs import (
    MANIFEST,
    OutputMoved,
    OutputRefused,
    atomic_folder,
    atomic_path,
    check_output,
    foreign_entries,
)


def _siblings(folder: Path) -> list[str]:
    """Hidden entries: the temporaries and `.old` folders that must not survive."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _write(path: Path, files: dict[str, str]) -> None:
    with atomic_folder(path) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working folder holding an input file `data.csv`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("t,y\n0,1\n")
    return tmp_path


REFUSED = {
    # case: (how to make it, --out, force, message)
    "the input file": (None, "data.csv", False, "is the input data.csv"),
    "the input file, with force": (None, "data.csv", True, "is the input data.csv"),
    "the folder holding the input": (None, ".", True, "holds the input data.csv"),
    "a folder above the input": (None, "..", True, "holds the input"),
    "a file of the user's": ("file", "notes.txt", False, "is an existing file"),
    "a folder of the user's": ("folder", "mine", False, "a folder that sdessm did not write"),
    "an sdessm folder with a file added": ("added", "out", False, "holds notes.txt"),
    "a link": ("link", "link", False, "is a link"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_outputs(here, case):
    make, out, force, message = REFUSED[case]
    if make == "file":
        (here / out).write_text("mine")
    elif make == "folder":
        (here / out).mkdir()
        (here / out / "notes.txt").write_text("mine")
    elif make == "added":
        _write(here / out, {"params.json": "{}"})
        (here / out / "notes.txt").write_text("mine")
    elif make == "link":
        (here / "target").mkdir()
        (here / out).symlink_to(here / "target")
    before = {p.name: p.stat().st_mtime_ns for p in here.iterdir()}
    with pytest.raises(OutputRefused, match=message) as err:
        check_output(out, inputs=["data.csv"], force=force)
    assert "\n" not in str(err.value)
    assert {p.name: p.stat().st_mtime_ns for p in here.iterdir()} == before


def test_current_folder_and_home_are_refused_even_with_force(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", str(work), "..", "/"):
        with pytest.raises(OutputRefused, match="current folder|holding the current folder"):
            check_output(out, force=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with pytest.raises(OutputRefused, match="home folder"):
        check_output(tmp_path / "home", force=True)


def test_allowed_outputs(here):
    check_output("new-folder", inputs=["data.csv"])  # a new path
    (here / "empty").mkdir()
    check_output("empty", inputs=["data.csv"])  # an empty folder
    _write(here / "ours", {"a.txt": "1"})
    check_output("ours", inputs=["data.csv"])  # an sdessm folder as sdessm left it
    assert foreign_entries(here / "ours") == []
    (here / "notes.txt").write_text("mine")
    check_output("notes.txt", force=True)  # a user's file, asked for
    with pytest.raises(OutputRefused, match="is a folder"):
        check_output("ours", kind="file")  # a file output never replaces a folder


def test_a_forged_or_broken_manifest_is_not_sdessm_s(here):
    for text in ("not json", '{"written_by": "someone"}', '{"written_by": "sdessm"}', "[1]"):
        (here / "f").mkdir(exist_ok=True)
        (here / "f" / MANIFEST).write_text(text)
        assert foreign_entries(here / "f") is None
        with pytest.raises(OutputRefused, match="did not write"):
            check_output("f")


def test_atomic_folder_replaces_its_own_folder_whole(here):
    _write(here / "out", {"a.txt": "1", "b.txt": "2"})
    _write(here / "out", {"c.txt": "3"})
    assert sorted(p.name for p in (here / "out").iterdir()) == ["c.txt", MANIFEST]
    assert _siblings(here) == []


def test_atomic_folder_refuses_and_keeps_the_user_s_folder(here):
    (here / "mine").mkdir()
    (here / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OutputRefused):
        _write(here / "mine", {"a.txt": "1"})
    assert (here / "mine" / "notes.txt").read_text() == "mine"
    assert _siblings(here) == []


def test_force_replaces_a_file_and_a_foreign_folder(here):
    (here / "f").write_text("mine")
    with atomic_folder(here / "f", force=True) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (here / "f" / "a.txt").read_text() == "1"
    assert _siblings(here) == []


def test_failure_in_the_body_leaves_everything_as_it_was(here):
    _write(here / "out", {"a.txt": "old"})
    with pytest.raises(RuntimeError), atomic_folder(here / "out") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (here / "out" / "a.txt").read_text() == "old"
    assert _siblings(here) == []


def test_results_are_kept_when_the_destination_changes_during_the_run(here):
    """A folder of the user's appears at the destination while the results are computed: it is
    left alone and the results are saved whole under a free name."""
    with pytest.raises(OutputMoved) as moved, atomic_folder(here / "out") as tmp:
        (tmp / "a.txt").write_text("results")
        (here / "out").mkdir()
        (here / "out" / "notes.txt").write_text("mine")
    assert moved.value.path == here / "out-2"
    assert (here / "out-2" / "a.txt").read_text() == "results"
    assert (here / "out" / "notes.txt").read_text() == "mine"
    assert _siblings(here) == []


# --------------------------------------------------------------------------- killed mid-write

_WRITER = """
import os, sys, time
import sdessm.outputs as outputs
if {no_exchange}:
    outputs._swap = None  # the two-rename path of systems without an atomic exchange
if {pause_between_renames}:
    real_rename = os.rename
    def slow_rename(a, b):
        real_rename(a, b)
        if str(b).endswith(".old"):
            print("between", flush=True)
            time.sleep(60)
    os.rename = slow_rename
with outputs.atomic_folder(sys.argv[1]) as tmp:
    (tmp / "a.txt").write_text("new")
    if {pause_in_body}:
        print("writing", flush=True)
        time.sleep(60)
"""


def _kill_while(tmp_path, out: Path, wait_for: str, **flags) -> None:
    script = _WRITER.format(
        no_exchange=flags.get("no_exchange", False),
        pause_between_renames=flags.get("pause_between_renames", False),
        pause_in_body=flags.get("pause_in_body", False),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout.readline().strip() == wait_for
        assert _siblings(out.parent), "the writer should have a temporary to leave behind"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20  # the cleanup process acts when the pipe closes
    while _siblings(out.parent) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("existing", [False, True])
def test_a_kill_mid_write_leaves_no_temporary(tmp_path, existing):
    out = tmp_path / "results" / "out"
    out.parent.mkdir()
    if existing:
        _write(out, {"a.txt": "old"})
    _kill_while(out.parent, out, "writing", pause_in_body=True)
    assert _siblings(out.parent) == []
    if existing:
        assert (out / "a.txt").read_text() == "old"
    else:
        assert not out.exists()


def test_a_kill_between_the_two_renames_puts_the_old_folder_back(tmp_path):
    """Where no atomic exchange exists, the old folder is moved aside before the new one takes
    its place; a kill in between must not lose it."""
    out = tmp_path / "results" / "out"
    out.parent.mkdir()
    _write(out, {"a.txt": "old"})
    _kill_while(out.parent, out, "between", no_exchange=True, pause_between_renames=True)
    assert _siblings(out.parent) == []
    assert (out / "a.txt").read_text() == "old"


def test_the_two_rename_path_replaces_the_folder(tmp_path, monkeypatch):
    import sdessm.outputs as outputs

    monkeypatch.setattr(outputs, "_swap", None)
    _write(tmp_path / "out", {"a.txt": "old"})
    _write(tmp_path / "out", {"a.txt": "new"})
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    assert _siblings(tmp_path) == []


def test_atomic_path_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "run.npz"
    target.write_text("old")
    script = textwrap.dedent(
        """
        import sys, time
        from sdessm.outputs import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            tmp.write_text("half")
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while _siblings(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _siblings(tmp_path) == [] and target.read_text() == "old"


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]
