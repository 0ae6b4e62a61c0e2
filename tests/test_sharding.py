"""Sequences sharded across devices give the one-device EM result (4 CPU devices, subprocess)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import sdessm
from sdessm.em_problem import shard_sequences

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    import sdessm
    from sdessm.em_problem import shard_sequences

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    truth = sdessm.SDEParams(
        F=[[-0.3, 1.0], [-1.0, -0.3]], L=0.4 * np.eye(2), H=[[1.0, 0.0]], u=[0.2],
        R=[[0.05]], mu1=[0.0, 0.0], P1=np.eye(2),
    )
    times = 0.1 * np.arange(60)
    _, y = sdessm.simulate(jax.random.key(1), truth, times, num_sequences=8)
    y = np.array(y)
    y[rng.random(y.shape) < 0.2] = np.nan
    sharded = shard_sequences(y, "all")
    assert len(sharded.sharding.device_set) == 4
    assert sharded.addressable_shards[0].data.shape[0] == 2
    start = truth._replace(F=[[-0.5, 0.5], [-0.5, -0.5]], L=0.8 * np.eye(2), R=[[0.2]])
    out = {}
    for name, devices in (("one", None), ("four", "all")):
        fit = sdessm.fit_em(
            start, y, times, num_iters=5, finish="none", progress=False, devices=devices
        )
        out[name] = [np.asarray(fit.log_likelihoods).tolist(), np.asarray(fit.params.F).tolist()]
    json.dump(out, sys.stdout)
    """
)


def test_sharded_sequences_give_the_one_device_fit():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]

    out = json.loads(run.stdout.strip().splitlines()[-1])
    (lls_1, F_1), (lls_4, F_4) = out["one"], out["four"]
    assert len(lls_1) == len(lls_4) >= 3
    np.testing.assert_allclose(lls_4, lls_1, rtol=1e-10)
    np.testing.assert_allclose(F_4, F_1, rtol=1e-8, atol=1e-10)


def test_shard_sequences_checks_its_arguments():
    y = np.zeros((3, 5, 1))
    device = jax.devices()[0]
    assert np.asarray(shard_sequences(y, [device])).tolist() == y.tolist()
    with pytest.raises(ValueError, match="cannot be split evenly over 2 devices"):
        shard_sequences(y, [device, device])
    with pytest.raises(ValueError, match="`devices` must be 'all' or a non-empty list"):
        shard_sequences(y, [])
    with pytest.raises(ValueError, match="`devices` must be 'all'"):
        sdessm.fit_em(
            sdessm.LGSSMParams(
                A=[[0.9]], Sigma=[[0.1]], H=[[1.0]], u=[0.0], R=[[0.1]], mu1=[0.0], P1=[[1.0]]
            ),
            y,
            progress=False,
            devices="gpu",
        )
