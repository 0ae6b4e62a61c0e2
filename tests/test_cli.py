"""The command line and atomic output, end to end in a temporary folder."""

import os

import numpy as np
import pytest

from sdessm import cli
from sdessm.io import atomic_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_a_png(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--num-timesteps", "60", "--seed", "3"]) == 0
    png = out / "smoothed_states.png"
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    assert [p.name for p in out.iterdir()] == ["smoothed_states.png"]  # no temporary left over
    mask = os.umask(0)
    os.umask(mask)
    assert png.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
    printed = capsys.readouterr().out
    assert "log-likelihood" in printed and str(png) in printed


def test_demo_unusable_output_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["demo", "--out", str(blocker / "sub"), "--num-timesteps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdessm: error: cannot create output folder")


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--dt", "-1"])
    assert exc.value.code == 2
    assert "must be > 0" in capsys.readouterr().err


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.npy"
    np.save(target, np.arange(3))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("interrupted")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["result.npy"]
