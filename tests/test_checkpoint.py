"""EM checkpoints: resumed runs end exactly where uninterrupted ones do, also after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import linear_sde
from sdessm.models import load

import sdessm
from sdessm import checkpoint as ckpt

OU = load("ou")
START = {"theta": 1.0, "sigma": 0.5, "u": 0.0, "noise": 0.5}

# The problem of the kill test, run in a fresh interpreter: EM on the OU zoo model at irregular
# times (the numerical M-step: slow enough iterations to be killed in the middle of a run).
SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import sdessm
from sdessm.models import load

ou = load("ou")
rng = np.random.default_rng(5)
times = np.cumsum(rng.uniform(0.05, 0.5, 300))
sde = ou.to_sde(**{k: jnp.asarray(v) for k, v in ou.TRUE_PARAMS.items()})
y = np.array(sdessm.simulate(jax.random.key(5), sde, times)[1])
y[::9] = np.nan
start = {"theta": 1.0, "sigma": 0.5, "u": 0.0, "noise": 0.5}
res = sdessm.fit_em(ou.model, y, times, init=start, num_iters=int(sys.argv[2]), tol=0.0,
                    finish="none", progress=False,
                    checkpoint=sys.argv[1] if sys.argv[1] != "-" else None, checkpoint_every=1)
print(json.dumps({"params": {k: float(v) for k, v in res.params.items()},
                  "lls": [float(v) for v in res.log_likelihoods]}))
"""


def _problem(T=120, seed=3):
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.05, 0.5, T))
    sde = OU.to_sde(**{k: jnp.asarray(v) for k, v in OU.TRUE_PARAMS.items()})
    y = np.array(sdessm.simulate(jax.random.key(seed), sde, times)[1])
    y[::9] = np.nan
    return times, y


def _fit(times, y, num_iters, checkpoint=None, **kw):
    return sdessm.fit_em(
        OU.model,
        y,
        times,
        init=START,
        num_iters=num_iters,
        tol=0.0,
        finish="none",
        progress=False,
        checkpoint=checkpoint,
        **kw,
    )


def _same(a, b):
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    np.testing.assert_array_equal(a.log_likelihoods, b.log_likelihoods)
    assert a.num_iters == b.num_iters and a.converged == b.converged


@pytest.fixture(scope="module")
def data():
    return _problem()


def test_resume_continues_exactly(data, tmp_path):
    times, y = data
    whole = _fit(times, y, 6)
    path = tmp_path / "em.npz"
    first = _fit(times, y, 3, path, checkpoint_every=2)
    assert first.report["stopped"] == "reached num_iters" and first.num_iters == 3
    np.testing.assert_array_equal(first.log_likelihoods, whole.log_likelihoods[:4])
    resumed = _fit(times, y, 6, path, checkpoint_every=2)  # a larger num_iters continues
    _same(resumed, whole)
    again = _fit(times, y, 6, path)  # finished: returned as saved, nothing recomputed
    _same(again, whole)


def test_sde_paths_resume_exactly(tmp_path):
    """The closed form (uniform steps) and the numerical transition M-step (irregular)."""
    rng = np.random.default_rng(0)
    truth = linear_sde([[-0.5, 1.0], [-1.0, -0.3]], 0.7, R=0.05)
    start = truth._replace(F=-np.eye(2), L=0.3 * np.eye(2), R=0.2 * np.eye(2))
    for times in (np.arange(80) * 0.2, np.cumsum(rng.uniform(0.05, 0.4, 80))):
        y = np.array(sdessm.simulate(jax.random.key(1), truth, times)[1])
        kw = dict(fixed=("H", "u", "mu1", "P1"), tol=0.0, finish="none", progress=False)
        whole = sdessm.fit_em(start, y, times, num_iters=8, **kw)
        path = tmp_path / f"sde{len(np.unique(np.diff(times).round(9)))}.npz"
        sdessm.fit_em(start, y, times, num_iters=3, checkpoint=path, **kw)
        resumed = sdessm.fit_em(start, y, times, num_iters=8, checkpoint=path, **kw)
        np.testing.assert_array_equal(resumed.params.F, whole.params.F)
        np.testing.assert_array_equal(resumed.params.Q, whole.params.Q)
        np.testing.assert_array_equal(resumed.log_likelihoods, whole.log_likelihoods)


def test_checkpoint_of_another_fit_is_refused(data, tmp_path):
    times, y = data
    path = tmp_path / "em.npz"
    _fit(times, y, 2, path)
    other = y.copy()
    other[1] += 1.0
    with pytest.raises(ValueError, match="was written by a different run"):
        _fit(times, other, 2, path)
    with pytest.raises(ValueError, match="was written by a different run"):
        sdessm.fit_em(OU.model, y, times, init=dict(START, theta=2.0), num_iters=2,
                      progress=False, checkpoint=path)  # fmt: skip
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not an sdessm EM checkpoint"):
        _fit(times, y, 2, tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="`checkpoint_every` must be >= 1"):
        _fit(times, y, 2, tmp_path / "x.npz", checkpoint_every=0)


def test_checkpoint_round_trip_is_exact(tmp_path):
    state = {"a": jnp.asarray([0.1, 1 / 3]), "b": jnp.asarray(np.pi)}
    key = ckpt.fingerprint(state, y=np.arange(3.0), path="p")
    assert key != ckpt.fingerprint(state, y=np.arange(3.0) + 1e-15, path="p")
    path = tmp_path / "c.npz"
    ckpt.save(path, state, state, [1.0, 2.0], [1.5, 2.5], 2, key)
    back = ckpt.load(path, state, key)
    for k in state:
        np.testing.assert_array_equal(back["state"][k], state[k])
    assert back["lls"] == [1.0, 2.0] and back["next_iter"] == 2 and back["stopped"] is None
    assert ckpt.load(tmp_path / "absent.npz", state, key) is None


@pytest.mark.slow
def test_sigkill_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    path = tmp_path / "em.npz"
    num_iters = 25
    # both interpreters share a compilation cache: the second one loads what the first compiled
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    cmd = [sys.executable, str(script), str(path), str(num_iters)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            done = _next_iter(path)
            if done >= 3:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = _next_iter(path)  # the file is whole: the last completed write
    assert 3 <= killed_at < num_iters, killed_at
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed = json.loads(run.stdout.strip().splitlines()[-1])
    fresh = subprocess.run(
        [sys.executable, str(script), "-", str(num_iters)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    whole = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert resumed == whole  # every parameter and every history entry, bit for bit
    assert len(whole["lls"]) == num_iters + 1


def _next_iter(path: Path) -> int:
    with np.load(path) as data:
        return json.loads(str(data["meta"]))["next_iter"]
