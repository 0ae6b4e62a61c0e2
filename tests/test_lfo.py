"""Leave-future-out against the exact predictive densities of a conjugate model, and the
pointwise log-likelihood that ArviZ reads."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.stats import norm

import sdessm
from sdessm.lfo import leave_future_out, psis
from sdessm.ppl import LTISDE

THETA, R, PRIOR_SD = 0.5, 0.3, 2.0  # dx = -theta x dt + dW: stationary variance 1 / (2 theta)


def level_model(times, y=None):
    """A known OU seen in noise with an unknown offset u ~ N(0, PRIOR_SD^2): y is jointly
    Gaussian with u marginalised, so every predictive density has a closed form."""
    u = numpyro.sample("u", dist.Normal(0.0, PRIOR_SD))
    eye = jnp.eye(1)
    lti = LTISDE(
        F=-THETA * eye, L=eye, H=eye, u=jnp.reshape(u, (1,)), R=R * eye,
        mu1=jnp.zeros(1), P1=eye / (2 * THETA), times=times,
    )  # fmt: skip
    numpyro.sample("y", lti, obs=y)


def _data(T=16, seed=4):
    times = np.cumsum(np.r_[0.0, np.full(T - 1, 0.4)])
    sde = sdessm.SDEParams(
        F=-THETA * jnp.eye(1), L=jnp.eye(1), H=jnp.eye(1), u=jnp.array([1.5]),
        R=R * jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1) / (2 * THETA),
    )  # fmt: skip
    _, y = sdessm.simulate(jax.random.key(seed), sde, times)
    return times, np.array(y)


def _exact_predictive(times, y, k):
    """log p(y_k | y_{1:k-1}) from the dense joint Gaussian of y (u marginalised)."""
    lag = np.abs(times[:, None] - times[None, :])
    cov = np.exp(-THETA * lag) / (2 * THETA) + R * np.eye(len(times)) + PRIOR_SD**2
    past, obs = slice(0, k), y[:, 0]
    gain = np.linalg.solve(cov[past, past], cov[past, k])
    mean, var = gain @ obs[past], cov[k, k] - gain @ cov[past, k]
    return norm.logpdf(obs[k], mean, np.sqrt(var))


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_lfo_matches_the_exact_predictive_densities(data, method):
    times, y = data
    first = 11
    result = leave_future_out(
        level_model, y, times, min_observations=first, method=method,
        num_warmup=300, num_samples=1000, num_chains=2, progress=False,
    )  # fmt: skip
    exact = np.array([_exact_predictive(times, y, k) for k in range(first, len(times))])
    np.testing.assert_array_equal(result.rows, np.arange(first, len(times)))
    np.testing.assert_allclose(result.pointwise, exact, atol=0.03)
    assert result.elpd == pytest.approx(exact.sum(), abs=0.08)
    if method == "exact":
        assert result.refits == tuple(range(first, len(times)))
        assert np.all(np.isnan(result.pareto_k))
    else:  # one more observation of a one-parameter model: the importance weights suffice
        assert result.refits[0] == first and len(result.refits) < len(result.rows)
        assert np.all(result.pareto_k[1:][~np.isin(result.rows[1:], result.refits)] <= 0.7)


def test_lfo_refuses_bad_arguments(data):
    times, y = data
    with pytest.raises(ValueError, match="`min_observations` must be below T = 16"):
        leave_future_out(level_model, y, times, min_observations=16)
    with pytest.raises(ValueError, match="`min_observations` must be >= 1"):
        leave_future_out(level_model, y, times, min_observations=0)
    with pytest.raises(ValueError, match="`method`"):
        leave_future_out(level_model, y, times, min_observations=3, method="loo")
    with pytest.raises(ValueError, match=r"one sequence \(T, p\)"):
        leave_future_out(level_model, np.stack([y, y]), times, min_observations=3)
    gappy = y.copy()
    gappy[12:] = np.nan
    with pytest.raises(ValueError, match="no row from `min_observations` = 12 on"):
        leave_future_out(level_model, gappy, times, min_observations=12)


def test_psis_weights_are_the_normalised_ratios_when_they_are_tame():
    """Light-tailed ratios: smoothing leaves an expectation as plain importance sampling has it,
    and k-hat is small; ratios with a Pareto tail get its shape as k-hat."""
    rng = np.random.default_rng(0)
    log_ratios = rng.normal(0.0, 0.3, size=4000)
    log_w, k_hat = psis(log_ratios)
    assert np.exp(log_w).sum() == pytest.approx(1.0)
    plain = np.exp(log_ratios - np.logaddexp.reduce(log_ratios))
    x = rng.normal(size=4000)
    assert np.exp(log_w) @ x == pytest.approx(plain @ x, abs=1e-3)
    assert k_hat < 0.3
    # exponential log ratios: Pareto ratios of shape 1, so k = 1
    assert psis(rng.exponential(1.0, size=4000))[1] == pytest.approx(1.0, abs=0.2)


def test_the_pointwise_log_likelihood_sums_to_the_log_likelihood(data):
    times, y = data
    y = y.copy()
    y[3] = np.nan
    draws = {"u": np.array([[0.0, 1.0, 2.5], [-1.0, 0.5, 3.0]])}
    ll = sdessm.pointwise_log_likelihood(level_model, draws, y, times)
    assert ll.shape == (2, 3, len(times))
    assert ll[0, 1, 3] == 0.0  # nothing observed
    for c, i in [(0, 0), (1, 2)]:
        sde = sdessm.SDEParams(
            F=-THETA * jnp.eye(1), L=jnp.eye(1), H=jnp.eye(1), u=jnp.array([draws["u"][c, i]]),
            R=R * jnp.eye(1), mu1=jnp.zeros(1), P1=jnp.eye(1) / (2 * THETA),
        )  # fmt: skip
        assert ll[c, i].sum() == pytest.approx(float(sdessm.log_likelihood(sde, y, times)))
    with pytest.raises(ValueError, match=r"no draws of the site\(s\) \['u'\]"):
        sdessm.pointwise_log_likelihood(level_model, {"v": draws["u"]}, y, times)


def _nuts(y, times, **kwargs):
    settings = dict(num_warmup=50, num_samples=50, num_chains=2, progress=False)
    return sdessm.fit_nuts(level_model, y, times, **settings, **kwargs)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter")  # 100 draws
def test_fit_nuts_stores_the_log_density_of_every_observed_time_for_arviz(data):
    times, y = data
    gappy = y.copy()
    gappy[[2, 9]] = np.nan
    idata = _nuts(gappy, times)
    ll = idata["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "time")  # the rows with nothing observed left out
    np.testing.assert_allclose(ll["time"].values, np.delete(times, [2, 9]))
    post = {"u": np.asarray(idata["posterior"]["u"].values)}
    every = sdessm.pointwise_log_likelihood(level_model, post, gappy, times)
    np.testing.assert_array_equal(ll.values, np.delete(every, [2, 9], axis=-1))
    # ArviZ's comparisons run on it (waic exists in ArviZ 0.x only)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo if hasattr(loo, "elpd_loo") else loo.elpd)  # 0.x, 1.x
    other = _nuts(gappy + 0.0, times, seed=1)
    table = az.compare({"first": idata, "second": other})
    assert set(table.index) == {"first", "second"}


def test_several_sequences_keep_a_sequence_axis_or_one_of_observations(data):
    times, y = data
    both = np.stack([y, y[::-1]])
    ll = _nuts(both, times)["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "sequence", "time") and ll.shape[2:] == (2, len(times))
    both[1, 4] = np.nan
    ll = _nuts(both, times)["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "observation") and ll.shape[2] == 2 * len(times) - 1
    np.testing.assert_array_equal(ll["sequence"].values[len(times) :], 1)
    per_sequence = _nuts(both, times, pointwise=False)["log_likelihood"]["y"]
    assert per_sequence.dims == ("chain", "draw", "sequence")
    np.testing.assert_allclose(
        per_sequence.values[..., 1], ll.values[..., len(times) :].sum(-1), rtol=1e-12
    )
