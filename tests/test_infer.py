"""EM and NUTS on NumPyro models: optimality against independent optimisers, errors, ArviZ data."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.optimize
from numpyro.infer.util import log_density
from sdessm.models import load

import sdessm
from sdessm.infer import fit_nuts
from sdessm.model_em import trace_model
from sdessm.ppl import LTISDE

OU = load("ou")
OSC = load("damped_oscillator")


def _simulate(module, T, dt, key, params=None):
    params = module.TRUE_PARAMS if params is None else params
    sde = module.to_sde(**{k: jnp.asarray(v, dtype=float) for k, v in params.items()})
    times = np.arange(T) * dt
    _, y = sdessm.simulate(key, sde, times)
    return times, np.array(y)


@pytest.fixture(scope="module")
def ou_data():
    times, y = _simulate(OU, 300, 0.25, jax.random.key(3))
    y[::7] = np.nan  # missing values are part of the E-step
    return times, y


def _exact_loglik(module, values, y, times):
    sde = module.to_sde(**{k: jnp.asarray(v) for k, v in values.items()})
    return float(sdessm.kalman_filter(sde, y, times).log_likelihood)


def test_mle_is_the_maximiser_of_the_exact_likelihood(ou_data):
    """EM on the NumPyro model vs Nelder-Mead on the Kalman log-likelihood (log coordinates)."""
    times, y = ou_data
    start = dict(theta=0.5, sigma=1.0, u=0.0, noise=0.3)  # the prior medians lead to theta -> 0
    result = sdessm.fit_em(OU.model, y, times, init=start, tol=1e-12, progress=False)
    assert result.converged
    assert sorted(result.params) == ["noise", "sigma", "theta", "u"]
    assert result.report["model_sites"] == list(result.params)
    np.testing.assert_allclose(
        result.log_likelihood, _exact_loglik(OU, result.params, y, times), rtol=1e-10
    )
    assert np.all(np.diff(result.log_likelihoods) >= -1e-9 * abs(result.log_likelihood))

    names = ["theta", "sigma", "u", "noise"]
    positive = np.array([True, True, False, True])

    @jax.jit
    def negative(v):  # the exact log-likelihood in log coordinates for the positive parameters
        x = jnp.where(positive, jnp.exp(v), v)
        sde = OU.to_sde(*x)
        return -sdessm.kalman_filter(sde, y, times).log_likelihood

    start = np.array([np.log(0.4), np.log(0.5), 1.0, np.log(0.2)])  # not EM's start
    opt = scipy.optimize.minimize(
        lambda v: [np.asarray(a) for a in jax.value_and_grad(negative)(jnp.asarray(v))],
        start,
        jac=True,
        method="BFGS",
        options=dict(gtol=1e-9),
    )
    assert -opt.fun <= result.log_likelihood + 1e-7
    x = np.where(positive, np.exp(opt.x), opt.x)
    for n, value in zip(names, x, strict=True):
        np.testing.assert_allclose(result.params[n], value, rtol=1e-3, err_msg=n)


def test_map_is_a_stationary_point_of_numpyros_log_joint(ou_data):
    """The MAP estimate zeroes the gradient of NumPyro's own log joint in the site coordinates."""
    times, y = ou_data
    start = dict(theta=0.5, sigma=1.0, u=0.0, noise=0.3)
    result = sdessm.fit_em(
        OU.model, y, times, objective="map", init=start, tol=1e-13, progress=False
    )
    values = {k: jnp.asarray(v) for k, v in result.params.items()}

    def log_joint(v):
        with jax.numpy_dtype_promotion("standard"):
            return log_density(OU.model, (times,), {"y": y}, v)[0]

    grad = jax.grad(log_joint)(values)
    se = result.standard_errors()  # the scale of each coordinate
    for k, g in grad.items():  # the gradient is flat on the scale of the posterior sd
        assert abs(float(g)) * float(se[k]) < 1e-4, (k, float(g), float(se[k]))
    np.testing.assert_allclose(
        result.report["log_posteriors"][-1], float(log_joint(values)), rtol=1e-9
    )
    mle = sdessm.fit_em(OU.model, y, times, init=start, progress=False)
    assert result.log_likelihood <= mle.log_likelihood + 1e-8
    assert sorted(se) == sorted(result.params) and all(np.isfinite(v) for v in se.values())


def test_unconstrained_model_takes_the_closed_form(key):
    module = load("unconstrained")
    times, y = _simulate(module, 200, 0.2, key)
    result = sdessm.fit_em(module.model, y, times, num_iters=30, progress=False)
    assert result.report["path"] == "closed form"
    assert sorted(result.params) == sorted(module.TRUE_PARAMS)
    np.testing.assert_allclose(
        result.log_likelihood, _exact_loglik(module, result.params, y, times), rtol=1e-9
    )


def _two_sites(times, y=None):
    theta = numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    sde = OU.to_sde(theta, 1.0, 0.0, 0.1)
    numpyro.sample("y1", LTISDE(*sde, times=times), obs=y)
    numpyro.sample("y2", LTISDE(*sde, times=times), obs=y)


def _no_site(times, y=None):
    numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(0.0, 1.0).expand(np.shape(y)).to_event(2), obs=y)


def _clash(times, y=None):
    theta = numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    numpyro.sample("y", LTISDE(*OU.to_sde(theta, 1.0, 0.0, 0.1), times=times), obs=y)


def test_bad_models_and_data(ou_data):
    times, y = ou_data
    cases = [
        (_two_sites, y, "exactly one `LTISDE` sample site; it has 2: ['y1', 'y2']"),
        (_no_site, y, "it has none (its sites: ['theta', 'y'])"),
        (_clash, y, "the model's sample sites clash"),
        (OU.model, np.zeros((len(times), 2)), "expects (T, p) = (300, 1)"),
        (OU.model, y[:-1], "expects (T, p) = (300, 1)"),
        ("ou", y, "`model` must be a NumPyro model function"),
    ]
    for model, data, message in cases:
        with pytest.raises((ValueError, TypeError), match=re.escape(message)):
            trace_model(model, data, times)
    with pytest.raises(ValueError, match=re.escape("do not apply to a NumPyro model")):
        sdessm.fit_em(OU.model, y, times, fixed=("u",))
    with pytest.raises(ValueError, match=re.escape("`objective` must be 'mle' or 'map'")):
        sdessm.fit_em(OU.model, y, times, objective="mode")
    with pytest.raises(ValueError, match=re.escape("apply to a NumPyro model")):
        sdessm.fit_em(OU.to_sde(0.5, 1.0, 0.0, 0.1), y, times, objective="map")


def test_init_must_belong_to_the_model(ou_data):
    times, y = ou_data
    with pytest.raises(ValueError, match=re.escape("not in the model ['rate']")):
        sdessm.fit_em(OU.model, y, times, init={"theta": 0.5, "rate": 1.0})
    with pytest.raises(ValueError, match=re.escape("`init['theta']` must have shape ()")):
        sdessm.fit_em(OU.model, y, times, init=dict(OU.TRUE_PARAMS, theta=[0.5, 0.6]))
    other = sdessm.fit_em(OSC.model, *_osc_data()[::-1], num_iters=2, progress=False)
    with pytest.raises(ValueError, match=re.escape("not in the model ['omega', 'zeta']")):
        fit_nuts(OU.model, y, times, init=other, num_warmup=1, num_samples=1, progress=False)


def _osc_data():
    times, y = _simulate(OSC, 120, 0.1, jax.random.key(11))
    return times, y


def test_fit_nuts_returns_arviz_data_with_em_and_truth_attached():
    times, y = _osc_data()
    em = sdessm.fit_em(OSC.model, y, times, objective="map", num_iters=50, progress=False)
    idata = fit_nuts(
        OSC.model,
        y,
        times,
        num_warmup=60,
        num_samples=40,
        num_chains=2,
        init=em,
        truth=OSC.TRUE_PARAMS,
        progress=False,
    )
    groups = list(idata.children) if hasattr(idata, "children") else idata.groups()  # 1.x, 0.x
    for group in ("posterior", "sample_stats", "observed_data", "log_likelihood"):
        assert group in groups
    post = idata["posterior"]
    assert np.asarray(post["omega"].values).shape == (2, 40)
    attrs = post.attrs
    assert json.loads(attrs["sdessm_truth"]) == OSC.TRUE_PARAMS
    np.testing.assert_allclose(json.loads(attrs["sdessm_em"])["omega"], em.params["omega"])
    np.testing.assert_allclose(np.asarray(idata["observed_data"]["y"].values), y)
    # the stored log densities of a draw, one per time, sum to the Kalman log-likelihood there
    ll = np.asarray(idata["log_likelihood"]["y"].values)
    assert ll.shape == (2, 40, len(times))
    for c, i in [(0, 0), (1, 39)]:
        draw = {k: float(post[k].values[c, i]) for k in OSC.TRUE_PARAMS}
        np.testing.assert_allclose(ll[c, i].sum(), _exact_loglik(OSC, draw, y, times), rtol=1e-9)
    with pytest.raises(ValueError, match=re.escape("`num_chains` must be >= 1")):
        fit_nuts(OSC.model, y, times, num_chains=0)
