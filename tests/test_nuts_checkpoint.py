"""NUTS runs saved, resumed and extended from a checkpoint: the same draws as one run."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sdessm.models import load

import sdessm
from sdessm import checkpoint
from sdessm.infer import fit_nuts

OSC = load("damped_oscillator")
# chains one after another: with the suite's compilation cache the second chain and every later
# block of the same length reuse the first one's compiled program
RUN = dict(num_warmup=30, num_chains=2, seed=5, progress=False, chain_method="sequential")


def _values(idata, group="posterior"):
    ds = idata[group]
    return {k: np.asarray(ds[k].values) for k in ds.data_vars}


def _assert_same(a, b):
    """The same groups, variables, dimensions and values (ArviZ's converter reads a
    checkpointed run's draws as it reads one `MCMC` run)."""
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        va, vb = _values(a, group), _values(b, group)
        assert va.keys() == vb.keys()
        for k in va:
            assert a[group][k].dims == b[group][k].dims, (group, k)
            np.testing.assert_array_equal(va[k], vb[k], err_msg=f"{group}/{k}")


def test_an_interrupted_run_resumes_and_extends_to_the_same_draws(tmp_path):
    sde = OSC.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in OSC.TRUE_PARAMS.items()})
    times = np.arange(50) * 0.1
    y = np.array(sdessm.simulate(jax.random.key(2), sde, times)[1])

    # a run that stopped after 8 draws per chain (what a run killed after its first block of 8
    # leaves on disk: the state after warm-up and after the block, and the block's draws)
    path = tmp_path / "run.npz"
    first = fit_nuts(OSC.model, y, times, num_samples=8, checkpoint=path, checkpoint_every=8, **RUN)
    with np.load(path) as saved:
        assert json.loads(str(saved["meta"]))["num_draws"] == 8
    # resumed and extended to 16 draws: no new warm-up, and the draws of one plain run
    resumed = fit_nuts(
        OSC.model, y, times, num_samples=16, checkpoint=path, checkpoint_every=8, **RUN
    )
    plain = fit_nuts(OSC.model, y, times, num_samples=16, **RUN)
    _assert_same(resumed, plain)
    np.testing.assert_array_equal(_values(first)["omega"], _values(plain)["omega"][:, :8])
    # a finished checkpoint returns its draws without sampling
    _assert_same(fit_nuts(OSC.model, y, times, num_samples=16, checkpoint=path, **RUN), plain)

    # another run's file is refused before any sampling
    other = tmp_path / "other.npz"
    shutil.copy(path, other)
    with pytest.raises(ValueError, match="was written by a different run"):
        fit_nuts(OSC.model, y[:-1], times[:-1], num_samples=5, checkpoint=other, **RUN)
    with pytest.raises(ValueError, match="was written by a different run"):
        fit_nuts(OSC.model, y, times, num_samples=5, checkpoint=other, **(RUN | {"seed": 6}))
    em = tmp_path / "em.npz"
    checkpoint.save(em, {"a": np.zeros(2)}, {"a": np.zeros(2)}, [0.0], [0.0], 1, key="k")
    with pytest.raises(ValueError, match="is not an sdessm NUTS checkpoint"):
        fit_nuts(OSC.model, y, times, num_samples=5, checkpoint=em, **RUN)
    with pytest.raises(ValueError, match="`checkpoint_every` must be >= 1"):
        fit_nuts(OSC.model, y, times, num_samples=5, checkpoint=path, checkpoint_every=0)
