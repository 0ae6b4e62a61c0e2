"""Forecasts against the dense joint Gaussian on the extended grid, the OU closed form, and the
forecast law against Monte Carlo draws of posterior predictive paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from reference import dense_posterior, quadrature_sigma, random_problem, sde_params
from sdessm.models import load
from test_diagnostics import _idata as arviz_data

import sdessm

OU = load("ou")


def _dense_forecast(sde, times, y, future):
    """Moments of the future states and observations: the data grid extended by the future
    times, y extended by missing rows, conditioned densely (SciPy expm + quadrature)."""
    grid = np.concatenate([times, future])
    steps = np.diff(grid)
    Q = sde["L"] @ sde["L"].T
    A = np.stack([scipy.linalg.expm(sde["F"] * s) for s in steps])
    Sigma = np.stack([quadrature_sigma(sde["F"], Q, s) for s in steps])
    params = (A, Sigma, sde["H"], sde["u"], sde["R"], sde["mu1"], sde["P1"])
    y_ext = np.concatenate([y, np.full((len(future), y.shape[1]), np.nan)])
    means, blocks, _ = dense_posterior(params, y_ext)
    N, T = len(future), len(times)
    m = means[T:]
    P = np.stack([blocks[T + n, T + n] for n in range(N)])
    H, u, R = sde["H"], sde["u"], sde["R"]
    return m, P, m @ H.T + u, H @ P @ H.T + R, blocks[T:, T:]


@pytest.mark.parametrize("d, p, missing", [(2, 2, 0.3), (3, 1, 0.0), (1, 1, 0.2)])
def test_forecast_equals_dense_gaussian(rng, d, p, missing):
    sde, times, _, y = random_problem(rng, 7, d, p, irregular=True, missing=missing)
    future = times[-1] + np.cumsum(rng.uniform(0.05, 0.9, size=4))
    fc = sdessm.forecast(sde_params(sde, as_jax=True), y, times, future)
    m, P, ym, yc, _ = _dense_forecast(sde, times, y, future)
    np.testing.assert_allclose(fc.times, future)
    np.testing.assert_allclose(fc.state_means, m, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fc.state_covs, P, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fc.obs_means, ym, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fc.obs_covs, yc, rtol=1e-8, atol=1e-10)


def test_scalar_ou_closed_form():
    theta, sigma, u, noise = 0.7, 0.9, 1.5, 0.3
    sde = OU.to_sde(*(jnp.asarray(v) for v in (theta, sigma, u, noise)))
    y = np.array([[2.0], [np.nan], [2.4]])
    times = np.array([0.0, 0.5, 1.25])
    filt = sdessm.kalman_filter(sde, y, times)
    mT, PT = float(filt.filtered_means[-1, 0]), float(filt.filtered_covs[-1, 0, 0])
    h = np.array([0.1, 1.0, 3.0, 40.0])
    fc = sdessm.forecast(sde, y, times, times[-1] + h)
    decay = np.exp(-theta * h)
    var = decay**2 * PT + sigma**2 / (2 * theta) * (1 - decay**2)
    np.testing.assert_allclose(fc.state_means[:, 0], decay * mT, rtol=1e-12)
    np.testing.assert_allclose(fc.state_covs[:, 0, 0], var, rtol=1e-12)
    np.testing.assert_allclose(fc.obs_means[:, 0], decay * mT + u, rtol=1e-12)
    np.testing.assert_allclose(fc.obs_covs[:, 0, 0], var + noise**2, rtol=1e-12)
    # far ahead: the stationary law
    np.testing.assert_allclose(fc.obs_covs[-1, 0, 0], sigma**2 / (2 * theta) + noise**2)


def test_sequences_and_grids(rng):
    sde, times, _, y = random_problem(rng, 6, 2, 1, irregular=True, missing=0.2)
    y2 = rng.normal(size=y.shape)
    times2 = times * 1.3
    future = times2[-1] + np.array([0.2, 0.5, 1.5])
    params = sde_params(sde, as_jax=True)
    # per-sequence grids, shared future times
    fc = sdessm.forecast(params, np.stack([y, y2]), np.stack([times, times2]), future)
    for b, (yb, tb) in enumerate(((y, times), (y2, times2))):
        one = sdessm.forecast(params, yb, tb, future)
        np.testing.assert_allclose(fc.obs_means[b], one.obs_means, rtol=1e-12)
        np.testing.assert_allclose(fc.state_covs[b], one.state_covs, rtol=1e-12)
    # shared grid, per-sequence future times
    fut2 = np.stack([future, future + 1.0])
    fc = sdessm.forecast(params, np.stack([y, y2]), times2, fut2)
    for b, yb in enumerate((y, y2)):
        one = sdessm.forecast(params, yb, times2, fut2[b])
        np.testing.assert_allclose(fc.obs_covs[b], one.obs_covs, rtol=1e-12)


def test_uniform_steps_and_lgssm_agree(rng):
    sde, _, _, y = random_problem(rng, 9, 2, 2, missing=0.1)
    params = sde_params(sde, as_jax=True)
    dt = 0.3
    by_dt = sdessm.forecast(params, y, dt=dt, num_steps=5)
    by_times = sdessm.forecast(params, y, dt * np.arange(9), dt * np.arange(9, 14))
    lgssm = sdessm.discretize_params(params, dt=dt)
    by_steps = sdessm.forecast(lgssm, y, num_steps=5)
    np.testing.assert_allclose(by_dt.times, dt * np.arange(9, 14))
    for other in (by_times, by_steps):
        np.testing.assert_allclose(by_dt.obs_means, other.obs_means, rtol=1e-10)
        np.testing.assert_allclose(by_dt.obs_covs, other.obs_covs, rtol=1e-10)
    np.testing.assert_allclose(by_steps.times, np.arange(1.0, 6.0))


def test_em_result_forecasts_its_sde(key):
    times = np.arange(120) * 0.2
    sde = OU.to_sde(**{k: jnp.asarray(v) for k, v in OU.TRUE_PARAMS.items()})
    _, y = sdessm.simulate(key, sde, times)
    em = sdessm.fit_em(OU.model, np.asarray(y), times, init=OU.TRUE_PARAMS, num_iters=5)
    future = times[-1] + np.array([0.5, 1.0])
    a = sdessm.forecast(em, y, times, future)
    b = sdessm.forecast(em.sde, y, times, future)
    np.testing.assert_array_equal(a.obs_means, b.obs_means)


def test_jit_and_grad(rng):
    sde, times, _, y = random_problem(rng, 5, 2, 1)
    future = times[-1] + np.array([0.5, 1.0])

    def sd_ahead(F):
        fc = sdessm.forecast(sde_params(sde, as_jax=True)._replace(F=F), y, times, future)
        return jnp.sqrt(fc.obs_covs[-1, 0, 0])

    F = jnp.asarray(sde["F"])
    g = jax.grad(sd_ahead)(F)
    eps = 1e-6
    E = np.zeros_like(sde["F"])
    E[0, 1] = eps
    fd = (sd_ahead(F + E) - sd_ahead(F - E)) / (2 * eps)
    np.testing.assert_allclose(g[0, 1], fd, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(sd_ahead)(F), sd_ahead(F), rtol=1e-12)


# --------------------------------------------------------------------------- posterior predictive


def test_posterior_paths_follow_the_forecast_law():
    """At a single parameter value the paths must have the forecast's moments, including the
    covariance between future times (the dense joint), within Monte Carlo error."""
    values = {"theta": 0.6, "sigma": 0.8, "u": 1.0, "noise": 0.25}
    times = np.array([0.0, 0.4, 0.9, 1.0, 1.6])
    y = np.array([[1.2], [np.nan], [0.7], [0.9], [1.4]])
    future = np.array([1.8, 2.5, 4.0])
    S = 20000
    draws = {k: np.full(S, v) for k, v in values.items()}
    pf = sdessm.forecast_posterior(OU.model, draws, y, times, future, seed=1)
    assert pf.obs_draws.shape == (S, 3, 1) and pf.state_draws.shape == (S, 3, 1)
    sde = {k: np.asarray(v, dtype=float) for k, v in OU.to_sde(**values)._asdict().items()}
    _, _, ym, yc, blocks = _dense_forecast(sde, times, y, future)
    obs = np.asarray(pf.obs_draws)[:, :, 0]
    sd = np.sqrt(yc[:, 0, 0])
    np.testing.assert_array_less(np.abs(obs.mean(0) - ym[:, 0]), 5 * sd / np.sqrt(S))
    cov = np.cov(obs.T)
    ref = blocks[:, :, 0, 0] + np.diag(np.full(3, values["noise"] ** 2))
    se = np.sqrt((ref**2 + np.outer(np.diag(ref), np.diag(ref))) / S)  # Gaussian sample cov
    np.testing.assert_array_less(np.abs(cov - ref), 5 * se)


def test_posterior_forecast_mixes_parameter_draws():
    """Two parameter values, half the draws each: the predictive mean is the average of the
    two forecasts and the variance adds the spread of the means (law of total variance)."""
    times = np.arange(30) * 0.3
    y = np.sin(times)[:, None] + 1.0
    future = times[-1] + np.array([0.3, 1.0])
    a = {"theta": 0.4, "sigma": 0.5, "u": 1.0, "noise": 0.2}
    b = {"theta": 1.5, "sigma": 1.2, "u": 0.2, "noise": 0.4}
    S = 20000
    draws = {k: np.where(np.arange(S) % 2 == 0, a[k], b[k]) for k in a}
    pf = sdessm.forecast_posterior(OU.model, draws, y, times, future, seed=2)
    fa = sdessm.forecast(OU.to_sde(**a), y, times, future)
    fb = sdessm.forecast(OU.to_sde(**b), y, times, future)
    mean = 0.5 * (fa.obs_means + fb.obs_means)[:, 0]
    var = (
        0.5 * (fa.obs_covs + fb.obs_covs)[:, 0, 0] + 0.25 * (fa.obs_means - fb.obs_means)[:, 0] ** 2
    )
    obs = np.asarray(pf.obs_draws)[:, :, 0]
    np.testing.assert_array_less(np.abs(obs.mean(0) - mean), 5 * np.sqrt(var / S))
    np.testing.assert_allclose(obs.var(0), var, rtol=0.05)
    q = pf.quantiles([0.05, 0.5, 0.95])
    assert q.shape == (3, 2, 1) and np.all(q[0] < q[1]) and np.all(q[1] < q[2])


def test_posterior_forecast_from_arviz_data():
    times = np.arange(20) * 0.5
    y = np.cos(times)[:, None]
    rng = np.random.default_rng(0)
    post = {
        "theta": rng.uniform(0.3, 0.8, (2, 50)),
        "sigma": rng.uniform(0.5, 1.0, (2, 50)),
        "u": rng.normal(size=(2, 50)),
        "noise": rng.uniform(0.1, 0.3, (2, 50)),
    }
    idata = arviz_data(post)
    pf = sdessm.forecast_posterior(OU.model, idata, y, times, [10.5, 11.0], num_draws=40)
    assert pf.obs_draws.shape == (40, 2, 1)
    flat = {k: v.reshape(-1) for k, v in post.items()}
    ref = sdessm.forecast_posterior(OU.model, flat, y, times, [10.5, 11.0], num_draws=40)
    np.testing.assert_allclose(pf.obs_draws, ref.obs_draws, rtol=1e-12)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(future_times=[0.5, 0.8]), "start after the last observation time 0.9"),
        (dict(future_times=[1.5, 1.2]), "`future_times` must be strictly increasing"),
        (dict(future_times=[1.5, np.nan]), "`future_times`"),
        (dict(future_times=[[[1.5]]]), "`future_times` must have shape (N,) or (B, N)"),
        (dict(future_times=[1.5], num_steps=2), "either `future_times` or `num_steps`"),
        (dict(), "give `future_times`"),
        (dict(num_steps=3), "`num_steps` needs a uniform `dt`"),
        (dict(future_times=[[1.5], [2.0]]), "one grid per sequence"),
    ],
)
def test_bad_future(kwargs, message):
    sde = OU.to_sde(0.5, 1.0, 0.0, 0.1)
    times = np.array([0.0, 0.3, 0.9])
    with pytest.raises(ValueError, match=None) as err:
        sdessm.forecast(sde, np.ones((3, 1)), times, **kwargs)
    assert message in str(err.value)


def test_bad_params():
    sde = OU.to_sde(0.5, 1.0, 0.0, 0.1)
    y = np.ones((3, 1))
    with pytest.raises(TypeError, match="`params` must be SDEParams"):
        sdessm.forecast({"theta": 0.5}, y, [0.0, 1.0, 2.0], [3.0])
    lgssm = sdessm.discretize_params(sde, times=np.array([0.0, 1.0, 3.0]))
    with pytest.raises(ValueError, match="per-step `A`/`Sigma`"):
        sdessm.forecast(lgssm, y, num_steps=2)
    with pytest.raises(ValueError, match="has no time axis"):
        sdessm.forecast(lgssm, y, future_times=[4.0])
    with pytest.raises(ValueError, match=r"`num_steps` must be >= 1 \(an integer\)"):
        sdessm.forecast(sde, y, dt=1.0, num_steps=0)
    per_step = sde._replace(u=jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="time-invariant emissions"):
        sdessm.forecast(per_step, y, dt=1.0, num_steps=2)
    with pytest.raises(ValueError, match=r"no draws of the model's sites \['u'\]"):
        sdessm.forecast_posterior(OU.model, _idata_without_u(), y, np.array([0.0, 1.0, 2.0]), [3.0])


def _idata_without_u():
    return arviz_data({k: np.full((1, 3), 0.5) for k in ("theta", "sigma", "noise")})


def test_model_sde_is_the_models_own_construction():
    from sdessm.forecast import model_sde  # the module; `sdessm.forecast` is the function

    values = {"theta": 0.7, "sigma": 0.9, "u": 1.5, "noise": 0.3}
    times = np.arange(5) * 0.5
    got = model_sde(OU.model, values, np.ones((5, 1)), times)
    want = OU.to_sde(**{k: jnp.asarray(v) for k, v in values.items()})
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="missing"):
        model_sde(OU.model, {"theta": 0.7}, np.ones((5, 1)), times)
