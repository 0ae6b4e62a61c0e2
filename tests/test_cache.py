"""The persistent compilation cache: where it lives, how it is turned off, and that a second
command line run loads the compiled programs of the first."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from sdessm import cache
from sdessm.io import write_csv


def test_the_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENVIRONMENT, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_folder() == tmp_path / "xdg" / "sdessm" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.default_folder() == Path.home() / ".cache" / "sdessm" / "jax"
    monkeypatch.setenv(cache.ENVIRONMENT, str(tmp_path / "mine"))
    assert cache.default_folder() == tmp_path / "mine"
    for off in ("off", "OFF", "0", "false", "no", ""):
        monkeypatch.setenv(cache.ENVIRONMENT, off)
        assert cache.default_folder() is None


@pytest.fixture
def no_cache_configured():
    """JAX with no cache folder for the test; the session's folder restored after it."""
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", before)
    compilation_cache.reset_cache()


def test_enable_sets_up_a_private_folder(no_cache_configured, tmp_path):
    folder = tmp_path / "a" / "b"
    assert cache.enable_compilation_cache(folder) == folder
    assert folder.is_dir() and (folder.stat().st_mode & 0o077) == 0
    assert jax.config.jax_compilation_cache_dir == str(folder)


def test_enable_keeps_a_folder_given_to_jax_and_honours_off(no_cache_configured, monkeypatch,
                                                             tmp_path):  # fmt: skip
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
    assert cache.enable_compilation_cache(tmp_path / "other") == tmp_path / "users"
    assert not (tmp_path / "other").exists()
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(cache.ENVIRONMENT, "off")
    assert cache.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_enable_refuses_a_file(no_cache_configured, tmp_path):
    path = tmp_path / "cache"
    path.write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        cache.enable_compilation_cache(path)
    assert path.read_text() == "mine"


def _fit(csv, out, folder, *extra):
    # every program stored, however fast it compiled: on a loaded machine a program's compile
    # time may cross any threshold from one run to the next
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env[cache.ENVIRONMENT] = str(folder)
    run = subprocess.run(
        [sys.executable, "-m", "sdessm.cli", "fit", csv, "--model", "ou", "--time-column", "t",
         "--out", out, *extra],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_second_run_compiles_nothing_new(tmp_path):
    """The first `sdessm fit` writes its programs to the cache; a second one on the same data
    writes none (it found them all), and on other values of the same shape it finds most of
    them (this zoo model's priors read the data's scale, so the data enter its EM iteration as
    constants); `--no-compilation-cache` writes nothing."""
    rng = np.random.default_rng(0)
    times = 0.25 * np.arange(120)
    for i, scale in enumerate((1.0, 3.0)):
        y = np.zeros((120, 1))
        for k in range(1, 120):
            y[k] = 0.9 * y[k - 1] + rng.normal(size=1)
        write_csv(tmp_path / f"d{i}.csv", times, scale * y + 0.3 * rng.normal(size=y.shape), ["y"])
    folder = tmp_path / "cache"
    first = _fit(tmp_path / "d0.csv", tmp_path / "o0", folder)
    assert any(name.startswith("jit_") for name in first), first
    assert _fit(tmp_path / "d0.csv", tmp_path / "o1", folder) == first
    programs = {name.rsplit("-", 1)[0] for name in first if name.startswith("jit_")}
    new = {name.rsplit("-", 1)[0] for name in _fit(tmp_path / "d1.csv", tmp_path / "o2", folder)}
    assert len(new - programs) < len(programs) / 2, (new - programs, programs)
    off = tmp_path / "off"
    assert _fit(tmp_path / "d0.csv", tmp_path / "o3", off, "--no-compilation-cache") == []
