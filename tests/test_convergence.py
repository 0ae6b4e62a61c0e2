"""`converged` means a certified maximum of the exact log-likelihood, in the data's own units.

References: BFGS on the exact log-likelihood (`kalman_filter`) in coordinates of its own, from
several starts, and central differences of that log-likelihood.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from reference import scalar_ou
from sdessm.models import load

import sdessm
from sdessm import cli
from sdessm.io import write_csv

LEVEL = load("local_level")
NAMES = ("sigma", "noise", "level0")
POSITIVE = np.array([True, True, False])


def _series(seed, sigma, noise, level0=1000.0, T=100):
    """A local-level series in the units of a river's flow (a level near 1000, yearly steps)."""
    sde = LEVEL.to_sde(jnp.asarray(sigma), jnp.asarray(noise), jnp.asarray(level0))
    times = 1871.0 + np.arange(T)
    _, y = sdessm.simulate(jax.random.key(seed), sde, times)
    return times, np.array(y)


def _loglik(values, y, times):
    sde = LEVEL.to_sde(*(jnp.asarray(values[n], dtype=float) for n in NAMES))
    return sdessm.kalman_filter(sde, y, times).log_likelihood


def _reference_mle(y, times):
    """The best of BFGS runs on the exact log-likelihood, in coordinates of order one: the logs
    of sigma and noise, and level0 in units of the data's standard deviation."""
    scale = np.nanstd(y)

    def values(v):
        return np.where(POSITIVE, np.exp(np.where(POSITIVE, v, 0.0)), scale * v)

    @jax.jit
    def negative(v):
        x = jnp.where(POSITIVE, jnp.exp(jnp.where(POSITIVE, v, 0.0)), scale * v)
        return -_loglik(dict(zip(NAMES, x, strict=True)), y, times)

    def f(v):
        value, grad = jax.value_and_grad(negative)(jnp.asarray(v))
        return float(value), np.asarray(grad, dtype=float)

    starts = [
        [np.log(scale), np.log(scale), float(y[0, 0]) / scale],
        [np.log(0.1 * scale), np.log(scale), float(np.nanmean(y)) / scale],
        [np.log(scale), np.log(0.1 * scale), 0.0],
    ]
    runs = [
        scipy.optimize.minimize(f, s, jac=True, method="BFGS", options=dict(gtol=1e-8))
        for s in starts
    ]
    best = min(runs, key=lambda r: r.fun)
    return -best.fun, values(best.x)


@pytest.fixture(scope="module")
def flow():
    return _series(2, sigma=35.0, noise=120.0)


def test_a_stall_is_not_reported_converged_and_the_finish_reaches_the_mle(flow):
    times, y = flow
    best, _ = _reference_mle(y, times)
    start = {"sigma": 1.0, "noise": 1.0, "level0": 0.0}  # far from data near 1000
    stalled = sdessm.fit_em(LEVEL.model, y, times, init=start, finish="certify", progress=False)
    assert best - stalled.log_likelihood > 1.0  # EM alone stops far from the maximum...
    assert not stalled.converged  # ...and is not called converged
    assert stalled.report["convergence"].startswith("not certified")

    fit = sdessm.fit_em(LEVEL.model, y, times, init=start, progress=False)
    assert fit.converged, fit.report["convergence"]
    assert fit.report["convergence"].startswith("certified")
    assert abs(fit.log_likelihood - best) < 1e-3
    np.testing.assert_allclose(fit.log_likelihood, _loglik(fit.params, y, times), rtol=1e-12)
    se = fit.standard_errors()
    assert all(np.isfinite(se[n]) and se[n] > 0 for n in NAMES)


def test_certified_means_a_negligible_gradient(flow):
    """At a certified fit, central differences of the exact log-likelihood times the standard
    errors (the log-likelihood change over one standard error) are negligible."""
    times, y = flow
    fit = sdessm.fit_em(LEVEL.model, y, times, progress=False)
    assert fit.converged
    se = fit.standard_errors()
    for name in NAMES:
        h = 1e-4 * se[name]
        up, down = dict(fit.params), dict(fit.params)
        up[name] = fit.params[name] + h
        down[name] = fit.params[name] - h
        slope = float(_loglik(up, y, times) - _loglik(down, y, times)) / (2 * h)
        assert abs(slope) * se[name] < 1e-3, (name, slope)
    assert fit.report["gradient_norm"] < 1e-2
    assert 0 <= fit.report["predicted_gain"] <= 1e-6


@pytest.fixture(scope="module")
def no_drift():
    """A level that does not move: white noise around 350 (ppm), with a maximum at sigma = 0."""
    times, y = _series(1, sigma=0.0, noise=2.0, level0=350.0, T=150)
    return times, y


def _maximum_at_no_drift(y, times):
    """The premise, checked independently: the maximum over noise and level0 with sigma = 0, and
    the log-likelihood falls when sigma^2 grows from 0 there (the maximum is on the boundary)."""
    scale = np.nanstd(y)

    @jax.jit
    def negative(v, sigma):
        values = {"sigma": sigma, "noise": jnp.exp(v[0]), "level0": scale * v[1]}
        return -_loglik(values, y, times)

    opt = scipy.optimize.minimize(
        lambda v: [np.asarray(a, dtype=float) for a in jax.value_and_grad(negative)(v, 0.0)],
        [np.log(scale), float(y[0, 0]) / scale],
        jac=True,
        method="BFGS",
        options=dict(gtol=1e-9),
    )
    inside = -float(negative(opt.x, 1e-2 * np.exp(opt.x[0])))  # sigma = noise / 100
    assert inside < -opt.fun
    assert _reference_mle(y, times)[0] <= -opt.fun + 1e-6  # no better interior point found
    return -opt.fun


def test_a_boundary_is_named_and_not_converged(no_drift):
    times, y = no_drift
    best = _maximum_at_no_drift(y, times)
    fit = sdessm.fit_em(LEVEL.model, y, times, progress=False)
    assert not fit.converged
    assert fit.log_likelihood >= best - 1e-3
    assert list(fit.report["boundary"]) == ["sigma"]
    value, bound = fit.report["boundary"]["sigma"]
    assert bound == 0.0 and value < 1e-3
    assert "sigma" in fit.report["convergence"]


def test_strict_exit_status_and_the_saved_verdict(no_drift, tmp_path, capsys):
    times, y = no_drift
    data = tmp_path / "level.csv"
    write_csv(data, times, y, ["ppm"], time_column="year")
    args = ["fit", str(data), "--model", "local_level", "--time-column", "year"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0  # results all the same
    err = capsys.readouterr().err
    assert "sigma" in err and "edge of its range" in err
    saved = json.loads((tmp_path / "a" / "params.json").read_text())
    assert saved["converged"] is False
    assert list(saved["boundary"]) == ["sigma"]
    assert saved["convergence"].startswith("not certified")
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--strict"]) == cli.EXIT_WARNINGS
    assert (tmp_path / "b" / "params.json").exists()


def test_the_finish_stays_where_the_public_filter_is_defined():
    """A noise-free OU series with R free: the maximum pulls R to 0. Whatever the finish does,
    the returned parameters are valid and the recorded log-likelihood is the public filter's."""
    truth = scalar_ou(0.5, R=1e-12)
    times = 0.5 * np.arange(120)
    _, y = sdessm.simulate(jax.random.key(4), truth, times)
    start = truth._replace(F=-np.eye(1), R=0.3 * np.eye(1))
    fit = sdessm.fit_em(start, y, times, fixed=("H", "u", "mu1", "P1"), progress=False)
    assert np.linalg.eigvalsh(np.asarray(fit.params.R)).min() >= 0
    exact = float(sdessm.log_likelihood(fit.params, y, times))
    np.testing.assert_allclose(fit.log_likelihoods[-1], exact, rtol=1e-10)
    assert fit.converged or "R[0,0]" in fit.report["convergence"]
