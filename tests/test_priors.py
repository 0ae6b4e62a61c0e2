"""Priors in the data's own units: the scales, and the zoo's posteriors equivariant under a change
of the units of y and of time."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from sdessm.models import load

import sdessm
from sdessm.model_em import trace_model
from sdessm.priors import data_scales

# Each site's units: (power of y's unit, power of time's unit, shifted with y's origin). A change of
# units y -> a + b y, t -> c t maps a site value v to b^py c^pt v (+ a when shifted).
UNITS = {
    "ou": {"theta": (0, -1, False), "sigma": (1, -0.5, False), "u": (1, 0, True),
           "noise": (1, 0, False)},
    "local_level": {"sigma": (1, -0.5, False), "noise": (1, 0, False), "level0": (1, 0, True)},
    "damped_oscillator": {"omega": (0, -1, False), "zeta": (0, 0, False),
                          "sigma": (1, -1.5, False), "u": (1, 0, True), "noise": (1, 0, False)},
    "carma": {"omega": (0, -1, False), "zeta": (0, 0, False), "lam": (0, -1, False),
              "sigma": (1, -2.5, False), "b": (0, "j", False), "mu": (1, 0, True),
              "noise": (1, 0, False)},
    "multivariate_ou": {"a1": (0, -1, False), "a2": (0, -1, False), "b12": (0, -1, False),
                        "b21": (0, -1, False), "L_diag": (1, -0.5, False),
                        "L_off": (1, -0.5, False), "noise": (1, 0, False)},
    "trend_seasonal": {"level0": (1, 0, True), "slope0": (1, -1, False),
                       "sigma_level": (1, -0.5, False), "sigma_slope": (1, -1.5, False),
                       "omega": (0, -1, False), "lam": (0, -1, False), "sigma": (1, -0.5, False),
                       "noise": (1, 0, False)},
    "unconstrained": {"F": (0, -1, False), "L_diag": (0, -0.5, False),
                      "L_offdiag": (0, -0.5, False), "H": (1, 0, False), "u": (1, 0, True),
                      "noise": (1, 0, False)},
}  # fmt: skip
KWARGS = {"carma": {"p": 3, "q": 2}}  # every kind of site: omega, zeta, lam, b_1 and b_2


def _in_units(name, values, a, b, c):
    out = {}
    for site, v in values.items():
        py, pt, shifted = UNITS[name][site]
        v = np.asarray(v, dtype=float)
        if pt == "j":  # b_j has units time^j
            pt = np.arange(1, v.size + 1)
        out[site] = b**py * c**pt * v + (a if shifted else 0.0)
    return out


def _log_posterior(tm, values):
    sde = tm.sde({k: jnp.asarray(v) for k, v in values.items()})
    loglik = jnp.sum(sdessm.log_likelihood(sde, jnp.asarray(tm.y), jnp.asarray(tm.times)))
    return float(tm.log_prior(values)), float(loglik)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_the_zoo_posterior_is_the_same_in_any_units(name, rng):
    """Between two parameter points, the log-prior and the log-likelihood change by the same
    amounts for the data in new units (y -> a + b y, t -> c t) and the points mapped into them:
    the posterior is the same law, read in other units. a = 0 for the model without offset."""
    module, kwargs = load(name), KWARGS.get(name, {})
    times = np.arange(60) * 0.25
    truth = {k: jnp.asarray(v, dtype=float) for k, v in module.TRUE_PARAMS.items()}
    if name == "carma":
        truth = {"omega": [1.5], "zeta": [0.2], "lam": 0.7, "b": [0.4, 0.1], "sigma": 1.0,
                 "mu": 0.5, "noise": 0.2}  # fmt: skip
        truth = {k: jnp.asarray(v) for k, v in truth.items()}
    _, y = sdessm.simulate(jax.random.key(3), module.to_sde(**truth), times)
    y = np.array(y)
    y[7] = np.nan
    a = 0.0 if name == "multivariate_ou" else 1000.0
    b, c = 40.0, 1.0 / 52.0
    tm = trace_model(module.model, y, times, kwargs)
    tm_units = trace_model(module.model, a + b * y, c * times, kwargs)
    points = [truth]  # the truth and a point away from it, both inside the supports
    flat, unravel = jax.flatten_util.ravel_pytree(tm.unconstrain(truth))
    points.append(tm.constrain(unravel(flat + 0.3 * rng.normal(size=flat.shape))))
    here = [_log_posterior(tm, v) for v in points]
    there = [_log_posterior(tm_units, _in_units(name, v, a, b, c)) for v in points]
    for part in range(2):  # log-prior, log-likelihood
        size = max(abs(v[part]) for v in here + there)  # the local level's P1 = 1e-8 is in y^2
        np.testing.assert_allclose(
            there[1][part] - there[0][part], here[1][part] - here[0][part], atol=1e-9 * size
        )


def test_data_scales_are_the_median_and_the_normal_mad():
    rng = np.random.default_rng(0)
    y = rng.standard_t(3, size=(2, 500, 2)) * np.array([3.0, 0.5]) + np.array([100.0, -1.0])
    y[0, :40, 1] = np.nan
    times = np.cumsum(rng.uniform(0.5, 1.5, size=(2, 500)), axis=-1)
    s = data_scales(times, y)
    for j in range(2):
        v = y[..., j][np.isfinite(y[..., j])]
        assert s.level[j] == pytest.approx(np.median(v))
        mad = scipy.stats.median_abs_deviation(v, scale="normal")
        assert s.spread[j] == pytest.approx(mad)
    assert s.step == pytest.approx(np.median(np.diff(times, axis=-1)))
    assert s.span == pytest.approx(np.max(times[:, -1] - times[:, 0]))
    traced = jax.jit(lambda t, v: data_scales(t, v))(times, y)  # the same under tracing
    for got, want in zip(traced, s, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_data_scales_fall_back_where_the_mad_is_zero():
    y = np.array([[5.0, 1.0, np.nan], [5.0, 1.0, np.nan], [5.0, 1.0, np.nan], [9.0, 1.0, np.nan]])
    s = data_scales(np.arange(4.0), y)
    assert s.spread[0] == pytest.approx(np.std([5.0, 5.0, 5.0, 9.0]))  # MAD 0: the sd
    assert s.spread[1] == 1.0 and s.spread[2] == 1.0  # constant, never observed: 1
    assert s.level.tolist() == [5.0, 1.0, 0.0]
    s = data_scales(np.arange(4.0) * 7.0, None, obs_dim=2)  # no data: standard units
    assert s.level.tolist() == [0.0, 0.0] and s.spread.tolist() == [1.0, 1.0]
    assert (s.step, s.span) == (7.0, 21.0)


def test_rate_and_frequency_cover_what_the_record_resolves():
    from sdessm import priors

    s = data_scales(np.arange(1001) * 0.1, None)  # step 0.1, span 100
    for prior, (low, high) in [
        (priors.rate(s), (1 / 100, 1 / 0.1)),
        (priors.frequency(s), (2 * np.pi / 100, np.pi / 0.1)),
    ]:
        mass = float(prior.cdf(high) - prior.cdf(low))
        assert mass == pytest.approx(scipy.stats.norm.cdf(2) - scipy.stats.norm.cdf(-2), rel=1e-6)
