"""The model zoo: loading, the models' likelihood against dense Gaussian algebra, shipping."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from numpyro import handlers
from numpyro.infer import Predictive
from reference import dense_smoother, quadrature_sigma
from sdessm.models import available, load

import sdessm

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["damped_oscillator", "local_level", "multivariate_ou", "ou"]


def test_available_and_load_by_name():
    zoo = available()
    assert sorted(zoo) == NAMES
    assert all(summary for summary in zoo.values())
    for name in NAMES:
        module = load(name)
        assert callable(module.model) and isinstance(module.TRUE_PARAMS, dict)


def test_load_errors_and_user_files(tmp_path):
    with pytest.raises(ValueError, match=re.escape("unknown model 'oscilator'; the zoo has")):
        load("oscilator")
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "missing.py")
    incomplete = tmp_path / "incomplete.py"
    incomplete.write_text("def model(times, y=None):\n    pass\n")
    with pytest.raises(ValueError, match=r"does not define \['TRUE_PARAMS', 'to_sde'\]"):
        load(incomplete)
    mine = tmp_path / "my_ou.py"
    mine.write_text((ROOT / "models" / "ou.py").read_text())
    assert load(mine).TRUE_PARAMS == load("ou").TRUE_PARAMS


@pytest.mark.parametrize("name", NAMES)
def test_model_likelihood_is_the_dense_gaussian_marginal(name, key):
    module = load(name)
    times = np.sort(np.random.default_rng(1).uniform(0.0, 6.0, size=7))
    sde = module.to_sde(**module.TRUE_PARAMS)
    _, y = sdessm.simulate(key, sde, times)
    y = np.array(y)
    y[2, 0] = np.nan
    tr = handlers.trace(handlers.substitute(module.model, module.TRUE_PARAMS)).get_trace(
        jnp.asarray(times), y=jnp.asarray(y)
    )
    got = float(tr["y"]["fn"].log_prob(tr["y"]["value"]))
    # reference: SciPy expm + quadrature for each step, then one dense Gaussian
    F, Q = np.asarray(sde.F), np.asarray(sde.Q)
    steps = np.diff(times)
    A = np.stack([scipy.linalg.expm(F * s) for s in steps])
    Sigma = np.stack([quadrature_sigma(F, Q, s) for s in steps])
    arrays = (A, Sigma, *(np.asarray(a) for a in sde[2:]))
    np.testing.assert_allclose(got, dense_smoother(arrays, y)[3], rtol=1e-8)


@pytest.mark.parametrize("name", ["ou", "damped_oscillator"])
def test_initial_state_is_stationary(name):
    sde = load(name).to_sde(**load(name).TRUE_PARAMS)
    F, Q = np.asarray(sde.F), np.asarray(sde.Q)
    stationary = scipy.linalg.solve_continuous_lyapunov(F, -Q)  # F P + P F^T + Q = 0
    np.testing.assert_allclose(sde.P1, stationary, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_prior_predictive(name, key):
    module = load(name)
    times = jnp.linspace(0.0, 10.0, 20)
    draws = Predictive(module.model, num_samples=3)(key, times)
    p = module.to_sde(**module.TRUE_PARAMS).obs_dim
    assert draws["y"].shape == (3, 20, p)
    assert np.all(np.isfinite(draws["y"]))


@pytest.mark.slow
def test_the_wheel_ships_the_zoo(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("sdessm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in NAMES + ["__init__"]:
        assert f"sdessm/models/{name}.py" in names
