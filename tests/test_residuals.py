"""One-step-ahead innovations against the dense joint Gaussian of the observations."""

import jax
import numpy as np
import pytest
import scipy.linalg
from reference import (
    dense_joint,
    dense_posterior,
    linear_sde,
    random_problem,
    scalar_ou,
    with_missing,
)

import sdessm


@pytest.mark.parametrize("per_step", [False, True], ids=["shared", "per_step_emissions"])
def test_standardised_innovations_are_the_inverse_cholesky_of_the_joint_law(rng, per_step):
    """Stacked in time order, the standardised innovations of the observed entries are
    C^{-1} (y - E y) with C the lower Cholesky factor of the joint covariance of the observed
    entries: exactly i.i.d. N(0, 1) under the model. Each step's log density is the dense
    log p(y_k | y_{1:k-1}); missing entries (a partly missing row, an all-missing row) are NaN."""
    T, d, p = 9, 2, 3
    _, _, lg, y = random_problem(rng, T, d, p, per_step_emissions=per_step, irregular=True)
    y[2, 1] = np.nan
    y[4] = np.nan
    y[6, [0, 2]] = np.nan
    params = sdessm.LGSSMParams(*lg)
    res = sdessm.innovations(params, y)

    _, _, mean_y, cov_y, _, _, _ = dense_joint(*lg, T)
    flat = y.reshape(-1)
    obs = ~np.isnan(flat)
    C = np.linalg.cholesky(cov_y[np.ix_(obs, obs)])
    w = scipy.linalg.solve_triangular(C, flat[obs] - mean_y[obs], lower=True)
    standardized = np.asarray(res.standardized).reshape(-1)
    np.testing.assert_array_equal(np.isnan(standardized), ~obs)
    np.testing.assert_allclose(standardized[obs], w, rtol=1e-9, atol=1e-10)
    raw = np.asarray(res.innovations).reshape(-1)
    np.testing.assert_array_equal(np.isnan(raw), ~obs)

    dense = [dense_posterior(lg, y, upto=k)[2] for k in range(T + 1)]
    np.testing.assert_allclose(res.log_densities, np.diff(dense), rtol=1e-9, atol=1e-10)
    assert float(res.log_densities[4]) == 0.0
    np.testing.assert_allclose(
        np.sum(res.log_densities), sdessm.kalman_filter(params, y).log_likelihood, rtol=1e-12
    )


def test_innovations_of_several_sequences_on_their_own_grids(rng, key):
    """An `SDEParams` with one time grid per sequence: each sequence's innovations are those
    of that sequence alone, and the covariances are the predicted covariances of y."""
    sde = linear_sde([[-0.5, 1.0], [-1.0, -0.3]], 0.4, [[1.0, 0.0]], u=0.2, R=0.1)
    times = np.cumsum(rng.uniform(0.1, 0.6, size=(3, 40)), axis=1)
    y = np.stack([np.asarray(sdessm.simulate(k, sde, t)[1]) for k, t in zip(
        jax.random.split(key, 3), times, strict=True)])  # fmt: skip
    y[1, 5] = np.nan
    res = sdessm.innovations(sde, y, times)
    assert res.standardized.shape == (3, 40, 1) and res.covariances.shape == (3, 40, 1, 1)
    for b in range(3):
        one = sdessm.innovations(sde, y[b], times[b])
        np.testing.assert_allclose(res.standardized[b], one.standardized, rtol=1e-12)
        np.testing.assert_allclose(res.log_densities[b], one.log_densities, rtol=1e-12)
    filtered = sdessm.kalman_filter(sde, y, times)
    H = np.asarray(sde.H)
    S = H @ np.asarray(filtered.predicted_covs) @ H.T + np.asarray(sde.R)
    np.testing.assert_allclose(res.covariances, S, rtol=1e-12)
    np.testing.assert_allclose(
        np.sum(res.log_densities, axis=1), filtered.log_likelihood, rtol=1e-12
    )


def test_bad_arguments_are_named():
    rw = scalar_ou(0.0)  # a random walk
    with pytest.raises(ValueError, match="times"):
        sdessm.innovations(rw, np.zeros((5, 1)))
    with pytest.raises(ValueError, match="y"):
        sdessm.innovations(rw, np.zeros((5, 2)), dt=1.0)


def _oscillator():
    F, L = [[0.0, 1.0], [-4.0, -0.4]], [[0.0, 0.0], [0.0, 0.8]]  # omega = 2, zeta = 0.1; L 2 x 2
    return linear_sde(F, L, [[1.0, 0.0], [0.5, 1.0]], u=[0.3, -0.1], R=0.05, P1=0.5)


def test_residual_tests_are_statsmodels_numbers(key):
    """On one complete sequence: statsmodels' Ljung-Box (several lags), Jarque-Bera and
    break-variance heteroskedasticity tests of the same innovations, number for number."""
    pytest.importorskip("statsmodels")
    from statsmodels.stats.diagnostic import acorr_ljungbox
    from statsmodels.stats.stattools import jarque_bera
    from statsmodels.tsa.stattools import breakvar_heteroskedasticity_test

    sde = _oscillator()
    _, y = sdessm.simulate(key, sde, dt=0.1, num_timesteps=301)
    wrong = sde._replace(F=[[0.0, 1.0], [-1.0, -0.4]])  # half the frequency: a misfit
    for params in (sde, wrong):
        w = np.asarray(sdessm.innovations(params, y, dt=0.1).standardized)
        tests = sdessm.residual_tests(w, lags=[1, 5, 12])
        assert tests.lags == (1, 5, 12)
        for i in range(2):
            lb = acorr_ljungbox(w[:, i], lags=[1, 5, 12])
            np.testing.assert_allclose(tests.ljung_box[i], lb["lb_stat"], rtol=1e-10)
            np.testing.assert_allclose(tests.ljung_box_p[i], lb["lb_pvalue"], rtol=1e-8)
            jb, jb_p, _, _ = jarque_bera(w[:, i])
            np.testing.assert_allclose(
                [tests.jarque_bera[i], tests.jarque_bera_p[i]], [jb, jb_p], rtol=1e-10
            )
            het = breakvar_heteroskedasticity_test(w[:, i], subset_length=round(301 / 3))
            np.testing.assert_allclose(
                [tests.heteroskedasticity[i], tests.heteroskedasticity_p[i]],
                [het.statistic, het.pvalue],
                rtol=1e-10,
            )
    assert tests.ljung_box_p.min() < 1e-6  # the misfit's innovations are correlated


def test_residual_test_p_values_are_uniform_under_the_model(key):
    """200 data sets simulated from the model itself, 20% of the values missing: the p-values
    of each test, over the data sets, are uniform (Kolmogorov-Smirnov at level 1e-3)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    sde = _oscillator()
    _, y = sdessm.simulate(key, sde, dt=0.1, num_timesteps=600, num_sequences=200)
    y = with_missing(np.random.default_rng(0), y, 0.2)
    w = np.asarray(sdessm.innovations(sde, y, dt=0.1).standardized)
    runs = [sdessm.residual_tests(w[b], lags=[3, 10]) for b in range(200)]
    for name in ("ljung_box_p", "jarque_bera_p", "heteroskedasticity_p"):
        p = np.stack([getattr(r, name) for r in runs]).reshape(200, -1)
        for column in p.T:
            assert scipy_stats.kstest(column, "uniform").pvalue > 1e-3, (name, column.mean())


def test_residual_tests_refuse_what_they_cannot_test():
    with pytest.raises(ValueError, match="standardized"):
        sdessm.residual_tests(np.zeros(10))
    with pytest.raises(ValueError, match="lags"):
        sdessm.residual_tests(np.random.default_rng(0).normal(size=(20, 1)), lags=[0, 3])
    few = np.full((20, 2), np.nan)
    few[:10, 0] = 1.0
    with pytest.raises(ValueError, match="column 1 .* 0 observed"):
        sdessm.residual_tests(few)


def test_plot_residuals_draws_one_row_per_column(key, tmp_path):
    sde = _oscillator()
    times = np.arange(200) * 0.1
    _, y = sdessm.simulate(key, sde, times)
    y = np.array(y)
    y[::7, 1] = np.nan
    w = sdessm.innovations(sde, y, times).standardized
    fig = sdessm.plot_residuals(w, times, names=["position", "mixture"], lags=15)
    axes = fig.get_axes()
    assert len(axes) == 8
    assert axes[0].get_ylabel() == "position" and axes[4].get_ylabel() == "mixture"
    assert len(axes[3].containers[0]) == 15  # one bar per lag
    assert "Ljung-Box(15) p = " in axes[7].get_title()
    fig.savefig(tmp_path / "residuals.png")


def test_information_criteria_count_the_identified_parameters(key):
    """A scalar OU seen with noise and an offset, 100 sequences: k = 5 free coordinates (F, Q,
    u, R, mu1; H and P1 fixed), n the observed values. Freeing H and P1 as well adds two
    coordinates but one direction the data cannot see (rescaling the state: F stays, Q and P1
    scale by c^2, H by 1/c, mu1 by c), so k = 6."""
    truth = scalar_ou(0.8, 0.9, u=0.5, R=0.3)
    _, y = sdessm.simulate(key, truth, dt=0.5, num_timesteps=20, num_sequences=100)
    y = np.array(y)
    y[:, ::10] = np.nan
    start = truth._replace(F=[[-2.0]], L=[[0.4]], u=[0.0], R=[[1.0]])
    fit = sdessm.fit_em(start, y, dt=0.5, fixed=("H", "P1"), progress=False)
    assert fit.converged
    ic = fit.information_criteria()
    n, ll = int(np.sum(~np.isnan(y))), fit.log_likelihood
    assert (ic["parameters"], ic["free_coordinates"], ic["observations"]) == (5, 5, n)
    np.testing.assert_allclose(ic["aic"], 2 * 5 - 2 * ll, rtol=1e-12)
    np.testing.assert_allclose(ic["aicc"], ic["aic"] + 2 * 5 * 6 / (n - 6), rtol=1e-12)
    np.testing.assert_allclose(ic["bic"], 5 * np.log(n) - 2 * ll, rtol=1e-12)
    assert ic == sdessm.information_criteria(fit)

    gauge = sdessm.fit_em(fit.params, y, dt=0.5, fixed=(), progress=False)
    ic = gauge.information_criteria()
    assert (ic["free_coordinates"], ic["flat_directions"], ic["parameters"]) == (7, 1, 6)
    assert gauge.log_likelihood >= ll - 1e-6  # P1 is free now: a larger model
