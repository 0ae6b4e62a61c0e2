"""Default starts from the data: sample moments, the zoo's `start_from_data`, the multi-start."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import with_missing
from sdessm.models import load

import sdessm
from sdessm import cli
from sdessm.io import read_csv, write_csv
from sdessm.model_em import _best_start, _prior_medians, trace_model
from sdessm.moments import differences, moments


def test_moments_match_a_loop_over_observed_pairs(rng):
    y = with_missing(rng, rng.normal(size=(3, 40, 2)) + np.array([5.0, -2.0]), 0.2)
    times = np.cumsum(rng.uniform(0.5, 1.5, size=40))
    m = moments(times, y, lags=3)
    for j in range(2):
        values = [v for v in y[..., j].ravel() if np.isfinite(v)]
        mean = sum(values) / len(values)
        assert m.mean[j] == pytest.approx(mean, rel=1e-12)
        for k in range(4):
            pairs = [
                (y[b, t, j] - mean) * (y[b, t - k, j] - mean)
                for b in range(3)
                for t in range(k, 40)
                if np.isfinite(y[b, t, j]) and np.isfinite(y[b, t - k, j])
            ]
            assert m.autocovariance[k, j] == pytest.approx(sum(pairs) / len(pairs), rel=1e-10)
    assert m.step == pytest.approx(np.median(np.diff(times)))
    first = y[0, np.isfinite(y[0, :, 0]), 0][0]
    assert m.first[0] == first
    t, d = differences(times, y)
    np.testing.assert_array_equal(d[1, 4], y[1, 5] - y[1, 4])
    assert t.shape == (3, 39)


def _long(name, params, T, dt, seed=0):
    module = load(name)
    sde = module.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in params.items()})
    times = np.arange(T) * dt
    _, y = sdessm.simulate(jax.random.key(seed), sde, times)
    return module, times, np.asarray(y)


@pytest.mark.parametrize(
    "name, params, dt, rtol",
    [
        # a series in its own units: a level near 1000, steps of a year
        ("local_level", {"sigma": 30.0, "noise": 100.0, "level0": 1000.0}, 1.0, 0.15),
        ("ou", {"theta": 0.5, "sigma": 40.0, "u": 350.0, "noise": 10.0}, 0.25, 0.15),
        ("multivariate_ou", None, 0.1, 0.3),
    ],
)
def test_start_from_data_is_consistent(name, params, dt, rtol):
    """On a long series the moment estimates approach the truth (they are consistent where the
    model is uncoupled: the multivariate OU truth here has no coupling)."""
    if name == "multivariate_ou":
        params = dict(load(name).TRUE_PARAMS, b12=0.0, b21=0.0, L_off=0.0)
    module, times, y = _long(name, params, 20000, dt)
    start = module.start_from_data(times, y)
    for k, truth in params.items():
        if k == "level0" or np.all(np.asarray(truth) == 0):
            continue
        if name == "multivariate_ou" and k == "noise":  # a share of the variance, not a fit
            continue
        np.testing.assert_allclose(start[k], truth, rtol=rtol, err_msg=k)
    if name == "local_level":
        assert start["level0"] == y[0, 0]


@pytest.mark.parametrize("name", ["damped_oscillator", "carma"])
def test_oscillators_start_at_the_spectral_peak(name):
    module = load(name)
    params = module.TRUE_PARAMS
    _, times, y = _long(name, params, 4000, 0.1)
    start = module.start_from_data(times, y)
    omega, zeta = np.ravel(params["omega"])[0], np.ravel(params["zeta"])[0]
    peak = omega * np.sqrt(max(1 - 2 * zeta**2, 0.0))  # the resonance of a damped oscillator
    np.testing.assert_allclose(np.ravel(start["omega"])[0], peak, rtol=0.1)
    sde = module.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in start.items()})
    variance = float((sde.H @ sde.P1 @ sde.H.T)[0, 0] + sde.R[0, 0])
    np.testing.assert_allclose(variance, np.nanvar(y), rtol=1e-6)  # the variance is matched


def test_the_default_start_is_the_best_candidate_by_exact_loglik():
    module, times, y = _long("local_level", {"sigma": 30.0, "noise": 100.0, "level0": 900.0}, 80, 1)
    tm = trace_model(module.model, y, times)
    best = _best_start(tm, jax.random.key(0))

    def loglik(values):
        sde = module.to_sde(**{k: jnp.asarray(v) for k, v in values.items()})
        return float(sdessm.kalman_filter(sde, y, times).log_likelihood)

    others = [_prior_medians(tm, jax.random.key(0)), module.start_from_data(times, y)]
    assert loglik(best) >= max(loglik(v) for v in others) - 1e-9


def test_a_partial_init_takes_the_rest_from_the_default():
    module, times, y = _long("ou", load("ou").TRUE_PARAMS, 200, 0.25)
    fit = sdessm.fit_em(
        module.model, y, times, init={"theta": 0.3}, finish="none", num_iters=1, progress=False
    )
    assert sorted(fit.params) == ["noise", "sigma", "theta", "u"]
    with pytest.raises(ValueError, match=r"not in the model \['rate'\]"):
        sdessm.fit_em(module.model, y, times, init={"rate": 0.3}, progress=False)


def test_init_option_parses_names_and_vectors():
    assert cli._site_values("theta=0.5,u=-1e3") == {"theta": 0.5, "u": -1000.0}
    assert cli._site_values("omega=[1, 2.5],sigma=3") == {"omega": [1.0, 2.5], "sigma": 3.0}
    for bad in ("theta", "theta=abc", "theta=1,theta=2", "=1", "theta=nan", "omega=[1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._site_values(bad)


def test_init_option_reaches_the_fit(tmp_path, capsys):
    _, times, y = _long("ou", load("ou").TRUE_PARAMS, 120, 0.25)
    data = tmp_path / "ou.csv"
    write_csv(data, times, y, ["y"])
    args = ["fit", str(data), "--model", "ou", "--iters", "1", "--out", str(tmp_path / "o")]
    assert cli.main([*args, "--init", "rate=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rate" in err and "theta" in err
    assert not (tmp_path / "o").exists()
    start = {"theta": 0.3, "sigma": 0.5, "u": 0.5, "noise": 0.3}
    assert cli.main([*args, "--init", ",".join(f"{k}={v}" for k, v in start.items())]) == 0
    _, history, names = read_csv(tmp_path / "o" / "em_history.csv", time_column="iteration")
    sde = load("ou").to_sde(**{k: jnp.asarray(v) for k, v in start.items()})
    first = float(sdessm.kalman_filter(sde, y, times).log_likelihood)
    assert history[0, names.index("log_likelihood")] == pytest.approx(first, rel=1e-10)


def _ar_series(continuous_roots, dt, T, seed=0):
    """A noise-free AR series from random initial values, whose roots are exp(root * dt): it
    satisfies its recursion exactly, so a least-squares AR fit recovers the roots to round-off."""
    z = np.exp(np.asarray(continuous_roots, dtype=complex) * dt)
    phi = -np.real(np.poly(z))[1:]  # x_t = phi_1 x_{t-1} + ... + phi_p x_{t-p}
    x = list(np.random.default_rng(seed).normal(size=len(phi)))
    for _ in range(T - len(phi)):
        x.append(phi @ np.array(x[-len(phi) :])[::-1])
    return np.arange(T) * dt, 10.0 + np.array(x)[:, None]


@pytest.mark.parametrize(
    "roots, expected",
    [
        ([-0.3], {"lam": 0.3}),  # a sampled OU is AR(1)
        (
            [-0.1 + 0.8j, -0.1 - 0.8j],
            {"omega": [np.hypot(0.1, 0.8)], "zeta": [0.1 / np.hypot(0.1, 0.8)]},
        ),
        # one oscillation and two real roots, which pair into an overdamped factor
        (
            [-0.1 + 0.8j, -0.1 - 0.8j, -0.5, -1.5],
            {
                "omega": [np.hypot(0.1, 0.8), np.sqrt(0.75)],
                "zeta": [0.1 / np.hypot(0.1, 0.8), 2.0 / (2.0 * np.sqrt(0.75))],
            },
        ),
    ],
)
def test_carma_start_reads_the_ar_roots(roots, expected):
    """`_ar_roots` maps the roots of a least-squares AR(p) fit to continuous time: on an AR
    series with roots exp(root dt) it returns omega = |root|, zeta = -Re root / |root| of each
    complex pair, real roots paired as s^2 + (r1 + r2) s + r1 r2, and lam for an odd one."""
    carma = load("carma")
    times, y = _ar_series(roots, 0.5, 40)
    got = carma._ar_roots(times, y, len(roots))
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6)
    assert carma._ar_roots(times + np.r_[0.0, 0.01, np.zeros(len(times) - 2)], y, 2) is None


def test_carma_offers_the_ar_roots_as_a_second_start():
    """On the yearly sunspots (square root) with p = 4, the periodogram puts both frequencies on
    the one 11-year peak; `more_starts_from_data` offers the AR(4) roots instead (one
    oscillation, one overdamped pair), a start of higher likelihood."""
    carma = load("carma")
    spots = sdessm.datasets.load("sunspots")
    times = spots["year"].to_numpy(dtype=float)
    y = np.sqrt(spots[["sunspots"]].to_numpy(dtype=float))
    spectral = carma.start_from_data(times, y, p=4, q=0)
    assert spectral["omega"][1] / spectral["omega"][0] < 1.1  # both on the one peak
    (other,) = carma.more_starts_from_data(times, y, p=4, q=0)
    np.testing.assert_allclose(other["omega"], carma._ar_roots(times, y, 4)["omega"])
    assert other["zeta"][1] > 1.0  # the overdamped pair
    ll = lambda named: float(sdessm.log_likelihood(carma.to_sde(**named), y, times))  # noqa: E731
    assert ll(other) > ll(spectral)
    assert carma.more_starts_from_data(times, y, p=1, q=0) == []  # AR(1): the same start


MULTI_START_MODEL = """
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from sdessm.ppl import LTISDE


def model(times, y=None):
    theta = numpyro.sample("theta", dist.LogNormal(3.0, 0.1))  # priors far from the data too
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.05))
    noise = numpyro.sample("noise", dist.HalfNormal(3.0))
    e = jnp.eye(1)
    numpyro.sample("y", LTISDE(F=-theta * e, L=sigma * e, H=e, u=jnp.zeros(1), R=noise**2 * e,
                               mu1=jnp.zeros(1), P1=sigma**2 / (2 * theta) * e, times=times), obs=y)


def start_from_data(times, y):
    return {"theta": 20.0, "sigma": 0.05, "noise": 3.0}   # far from the data


def more_starts_from_data(times, y):
    return [{"theta": 0.5, "sigma": 1.0, "noise": 0.3}]   # near the truth
"""


def test_em_runs_from_every_start_the_model_offers_and_keeps_the_best(tmp_path, key):
    """A model's `more_starts_from_data` starts EM in other basins: the fit runs from each, keeps
    the one with the highest final log-likelihood, and its report lists every start."""
    path = tmp_path / "two_starts.py"
    path.write_text(MULTI_START_MODEL)
    module = load(str(path))
    times = np.arange(150) * 0.5
    truth = sdessm.SDEParams(
        F=-0.5 * jnp.eye(1), L=jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1), R=0.09 * jnp.eye(1),
        mu1=jnp.zeros(1), P1=jnp.eye(1),
    )  # fmt: skip
    y = np.asarray(sdessm.simulate(key, truth, times)[1])
    options = dict(num_iters=3, finish="none", progress=False)
    fit = sdessm.fit_em(module.model, y, times, **options)
    runs = fit.report["starts"]
    assert [r["start"] for r in runs] == ["default", "more_starts_from_data[0]"]
    assert [r["chosen"] for r in runs] == [False, True]
    assert runs[1]["objective"] > runs[0]["objective"]
    near = sdessm.fit_em(module.model, y, times, init=module.more_starts_from_data(times, y)[0],
                         **options)  # fmt: skip
    assert float(fit.log_likelihoods[-1]) == pytest.approx(float(near.log_likelihoods[-1]))
    assert "starts" not in near.report  # a given start is the only one
    ckpt = tmp_path / "fit.ckpt"  # each run keeps its own checkpoint; a rerun resumes both
    first = sdessm.fit_em(module.model, y, times, checkpoint=ckpt, **options)
    again = sdessm.fit_em(module.model, y, times, checkpoint=ckpt, **options)
    assert ckpt.is_file() and (tmp_path / "fit.start1.ckpt").is_file()
    assert first.report["starts"] == again.report["starts"] == fit.report["starts"]
