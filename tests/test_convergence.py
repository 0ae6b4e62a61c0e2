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


def _exact_and_differenced(fit):
    """The autodiff Hessian's information, and `differenced`'s with its verdict, at a fit's
    estimate."""
    from sdessm import information

    labels, v0, objective, data, *_, signature = information.objective_of(fit)
    value_and_grad, hessian = information.programs(objective, signature)
    h = np.asarray(hessian(jnp.asarray(v0), data))
    gradient = lambda v: value_and_grad(jnp.asarray(v), data)[1]  # noqa: E731
    scales = information.coordinate_scales(labels, v0)
    return -0.5 * (h + h.T), *information.differenced(gradient, np.asarray(v0), scales)


@pytest.fixture(scope="module")
def two_scales():
    """A 2-D OU in two units (an offset near 350, variances from 0.3 to 1600), 20% missing, fit
    with F, Q, u and a diagonal R free. Its maximum over valid parameters has a singular Q."""
    rng = np.random.default_rng(3)
    truth = scalar_ou(0.8, 0.9, u=350.0, R=0.3)._replace(
        F=np.array([[-0.8, 0.3], [-0.3, -0.5]]), L=np.diag([0.9, 40.0]), H=np.eye(2),
        u=np.array([350.0, 0.02]), R=np.diag([0.3, 900.0]), mu1=np.zeros(2), P1=np.eye(2),
    )  # fmt: skip
    _, y = sdessm.simulate(jax.random.key(4), truth, dt=0.5, num_timesteps=600)
    y = np.array(y)
    y[rng.uniform(size=y.shape) < 0.2] = np.nan
    fixed = ("H", "mu1", "P1")
    return sdessm.fit_em(truth, y, dt=0.5, fixed=fixed, R_structure="diagonal", progress=False)


def test_the_information_from_gradients_is_the_exact_hessians(flow, two_scales):
    """Richardson-extrapolated differences of the exact gradient agree with the autodiff Hessian
    (the filter's recursion) to 1e-8 of the scale of each entry, on data in a river's units
    (the named coordinates) and on a 2-D SDE fit (the entries of F, Q, u, R, coordinates of
    very different sizes); the covariance of the estimates is the inverse's."""
    times, y = flow
    level = sdessm.fit_em(LEVEL.model, y, times, progress=False)
    for fit in (level, two_scales):
        exact, info, trusted = _exact_and_differenced(fit)
        assert trusted
        s = 1.0 / np.sqrt(np.diag(exact))
        np.testing.assert_allclose(info * np.outer(s, s), exact * np.outer(s, s), atol=1e-8)
        cov = sdessm.information.covariance(fit)[2]
        np.testing.assert_allclose(np.diag(cov), np.diag(np.linalg.inv(exact)), rtol=1e-7)


def test_a_maximum_at_a_singular_covariance_is_named(two_scales):
    """The log-likelihood still rises, but only where Q stops being positive semi-definite: the
    fit is not called converged, and the verdict names Q and the boundary."""
    fit = two_scales
    w = np.linalg.eigvalsh(np.asarray(fit.params.Q))
    assert w[0] < 1e-6 * w[-1]  # the estimate's Q is singular to working precision
    assert not fit.converged
    verdict = fit.report["convergence"]
    assert "on a boundary of the valid region" in verdict and "(a covariance" in verdict
    assert "Q, smallest eigenvalue" in verdict


def test_a_flat_direction_is_left_to_the_exact_hessian():
    """Where the information is singular (F, L and H all free), the differences are not trusted
    (`differenced` does not trust them) and the autodiff Hessian names the direction."""
    rng = np.random.default_rng(0)
    truth = scalar_ou(0.8, 0.9, u=0.5, R=0.3)._replace(
        F=np.array([[-0.8, 0.3], [-0.3, -0.5]]), L=0.5 * np.eye(2), H=rng.normal(size=(2, 2)),
        u=np.zeros(2), R=0.2 * np.eye(2), mu1=np.zeros(2), P1=np.eye(2),
    )  # fmt: skip
    _, y = sdessm.simulate(jax.random.key(1), truth, dt=0.3, num_timesteps=60)
    fit = sdessm.fit_em(truth, y, dt=0.3, fixed=("u", "mu1", "P1"), num_iters=20, progress=False)
    exact, _, trusted = _exact_and_differenced(fit)
    assert not trusted
    assert sdessm.information.flat_direction(sdessm.information.objective_of(fit)[0], exact)
    assert not fit.converged and "flat along the direction" in fit.report["convergence"]


def test_a_second_fit_of_a_model_reuses_its_compiled_finish(flow):
    """The finish's programs are kept by the form of the fit: a second fit of the same zoo model
    to the same data (another start) finds them (a key that changed with every fit compiled
    them anew: 14.6 s instead of 0.9 s on the oscillator)."""
    from sdessm import information

    times, y = flow
    first = sdessm.fit_em(LEVEL.model, y, times, progress=False)
    kept = set(information._PROGRAMS)
    start = {"sigma": 10.0, "noise": 50.0, "level0": 900.0}
    second = sdessm.fit_em(LEVEL.model, y, times, init=start, progress=False)
    assert set(information._PROGRAMS) == kept
    assert first.converged and second.converged
