"""NUTS runs saved, resumed and extended from a checkpoint: the same draws as one run."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sdessm.models import load

import sdessm
from sdessm.infer import fit_nuts

OSC = load("damped_oscillator")
RUN = dict(num_warmup=40, num_chains=2, seed=5, progress=False)


@pytest.fixture(scope="module")
def data():
    sde = OSC.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in OSC.TRUE_PARAMS.items()})
    times = np.arange(80) * 0.1
    _, y = sdessm.simulate(jax.random.key(2), sde, times)
    return times, np.array(y)


def _values(idata, group="posterior"):
    ds = idata[group]
    return {k: np.asarray(ds[k].values) for k in ds.data_vars}


def _assert_same(a, b):
    for group in ("posterior", "sample_stats", "log_likelihood"):
        va, vb = _values(a, group), _values(b, group)
        assert va.keys() == vb.keys()
        for k in va:
            np.testing.assert_array_equal(va[k], vb[k], err_msg=f"{group}/{k}")


def test_an_interrupted_run_resumes_and_extends_to_the_same_draws(data, tmp_path):
    times, y = data
    whole = tmp_path / "whole.npz"
    full = fit_nuts(
        OSC.model, y, times, num_samples=30, checkpoint=whole, checkpoint_every=10, **RUN
    )
    assert np.asarray(full["posterior"]["omega"].values).shape == (2, 30)
    # the same run without a checkpoint: one `MCMC.run`, the same draws
    _assert_same(full, fit_nuts(OSC.model, y, times, num_samples=30, **RUN))

    # a run that stopped after 10 draws per chain (what a run killed after its first block
    # leaves on disk), then extended to 30 draws: no new warm-up, the same 30 draws
    part = tmp_path / "part.npz"
    first = fit_nuts(
        OSC.model, y, times, num_samples=10, checkpoint=part, checkpoint_every=10, **RUN
    )
    np.testing.assert_array_equal(_values(first)["omega"], _values(full)["omega"][:, :10])
    killed = tmp_path / "killed.npz"
    shutil.copy(part, killed)
    resumed = fit_nuts(
        OSC.model, y, times, num_samples=30, checkpoint=killed, checkpoint_every=10, **RUN
    )
    _assert_same(full, resumed)
    # asking a finished checkpoint again returns its draws without sampling
    again = fit_nuts(OSC.model, y, times, num_samples=30, checkpoint=killed, **RUN)
    _assert_same(full, again)


def test_a_checkpoint_of_another_run_is_refused(data, tmp_path):
    times, y = data
    path = tmp_path / "run.npz"
    fit_nuts(OSC.model, y, times, num_samples=5, checkpoint=path, **RUN)
    with pytest.raises(ValueError, match="was written by a different run"):
        fit_nuts(OSC.model, y[:-1], times[:-1], num_samples=5, checkpoint=path, **RUN)
    with pytest.raises(ValueError, match="was written by a different run"):
        fit_nuts(OSC.model, y, times, num_samples=5, checkpoint=path, **(RUN | {"seed": 6}))
    em = tmp_path / "em.npz"
    sdessm.fit_em(OSC.model, y, times, num_iters=2, checkpoint=em, progress=False)
    with pytest.raises(ValueError, match="is not an sdessm NUTS checkpoint"):
        fit_nuts(OSC.model, y, times, num_samples=5, checkpoint=em, **RUN)
    with pytest.raises(ValueError, match="`checkpoint_every` must be >= 1"):
        fit_nuts(OSC.model, y, times, num_samples=5, checkpoint=path, checkpoint_every=0)
