"""The NumPyro LTISDE distribution: the same numbers as the Kalman filter, exact sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS, Predictive
from reference import dense_smoother, random_problem, sde_params, with_missing

import sdessm
from sdessm.ppl import LTISDE


def _dist(sde, times):
    return LTISDE(*(jnp.asarray(v) for v in sde.values()), times=jnp.asarray(times))


def test_log_prob_is_the_dense_gaussian_marginal(rng):
    sde, times, arrays, _ = random_problem(rng, 6, 2, 2, irregular=True)
    ys = with_missing(rng, rng.normal(size=(2, 3, 6, 2)), 0.2)
    lp = _dist(sde, times).log_prob(ys)
    assert lp.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(lp[i, j], dense_smoother(arrays, ys[i, j])[3], rtol=1e-8)


def test_sample_moments(rng, key):
    sde, times, _, _ = random_problem(rng, 4, 2, 2, irregular=True)
    d = _dist(sde, times)
    y = np.asarray(d.sample(key, (20_000,)))
    assert y.shape == (20_000, 4, 2)
    _, ref = sdessm.simulate(jax.random.key(7), sde_params(sde), times, 20_000)
    ref = np.asarray(ref)
    se = ref.std(0) / np.sqrt(20_000)
    np.testing.assert_array_less(np.abs(y.mean(0) - ref.mean(0)), 8 * se)


def test_jit_grad_vmap(rng):
    sde, times, arrays, y = random_problem(rng, 5, 2, 2, irregular=True)
    sde = {k: jnp.asarray(v) for k, v in sde.items()}

    def lp(F):
        return LTISDE(**(sde | {"F": F}), times=jnp.asarray(times)).log_prob(y)

    np.testing.assert_allclose(jax.jit(lp)(sde["F"]), dense_smoother(arrays, y)[3], rtol=1e-8)
    g = jax.grad(lp)(sde["F"])
    eps, E = 1e-6, np.zeros((2, 2))
    E[0, 1] = eps
    np.testing.assert_allclose(
        g[0, 1], (lp(sde["F"] + E) - lp(sde["F"] - E)) / (2 * eps), rtol=1e-5
    )
    Fs = jnp.stack([sde["F"], sde["F"] - 0.1 * jnp.eye(2)])
    np.testing.assert_allclose(jax.vmap(lp)(Fs)[0], lp(sde["F"]), rtol=1e-12)


def _ou_model(times, y=None):
    theta = numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    numpyro.sample(
        "y",
        LTISDE(
            F=-theta * jnp.eye(1),
            L=sigma * jnp.eye(1),
            H=jnp.eye(1),
            u=jnp.zeros(1),
            R=noise**2 * jnp.eye(1),
            mu1=jnp.zeros(1),
            P1=jnp.eye(1),
            times=times,
        ),
        obs=y,
    )


def test_predictive_and_a_short_nuts_run(key):
    times = jnp.linspace(0.0, 30.0, 150)
    prior = Predictive(_ou_model, num_samples=4)(key, times)
    assert prior["y"].shape == (4, 150, 1)
    truth = {"theta": 0.8, "sigma": 0.9, "noise": 0.2}
    y = Predictive(_ou_model, posterior_samples={k: jnp.array([v]) for k, v in truth.items()})(
        jax.random.key(1), times
    )["y"][0]
    mcmc = MCMC(NUTS(_ou_model), num_warmup=150, num_samples=150, progress_bar=False)
    with jax.numpy_dtype_promotion("standard"):  # NumPyro's NUTS mixes int and float
        mcmc.run(jax.random.key(2), times, y=y)
    post = mcmc.get_samples()
    assert np.all(np.isfinite(post["theta"]))
    # the posterior sits around the truth (a loose check: 150 draws of one short chain)
    assert abs(float(jnp.log(post["theta"].mean())) - np.log(0.8)) < 1.0


def test_event_shape_and_bad_times():
    d = LTISDE(
        F=-jnp.eye(2),
        L=jnp.eye(2),
        H=jnp.ones((3, 2)),
        u=jnp.zeros(3),
        R=jnp.eye(3),
        mu1=jnp.zeros(2),
        P1=jnp.eye(2),
        times=jnp.arange(7.0),
    )
    assert d.event_shape == (7, 3) and d.batch_shape == ()
    bad = LTISDE(
        F=-jnp.eye(1),
        L=jnp.eye(1),
        H=jnp.eye(1),
        u=jnp.zeros(1),
        R=jnp.eye(1),
        mu1=jnp.zeros(1),
        P1=jnp.eye(1),
        times=jnp.array([0.0, 2.0, 1.0]),
    )
    with pytest.raises(ValueError, match="strictly increasing"):
        bad.log_prob(jnp.zeros((3, 1)))


def _driven_ou(times, y=None, inputs=None):
    """An OU driven by a known input through an unknown gain b: dx = (-theta x + b v) dt."""
    theta = numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    e = jnp.eye(1)
    lti = LTISDE(
        F=-theta * e, L=sigma * e, H=e, u=jnp.zeros(1), R=noise**2 * e, mu1=jnp.zeros(1),
        P1=sigma**2 / (2.0 * theta) * e, B=jnp.reshape(b, (1, 1)), times=times, inputs=inputs,
    )  # fmt: skip
    numpyro.sample("y", lti, obs=y)


def test_nuts_recovers_the_gain_of_a_known_input():
    """A square-wave input drives an OU; NUTS through `LTISDE(..., B=, inputs=)` puts the gain
    (truth 1.2) and the rate (0.5) within 3 posterior sd; the log density is the
    filter's with the inputs."""
    times = np.arange(150) * 0.5
    v = np.sign(np.sin(times / 4.0))[:, None]
    truth = sdessm.SDEParams(
        F=-0.5 * jnp.eye(1), L=0.4 * jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
        R=0.05 * jnp.eye(1), mu1=jnp.zeros(1), P1=0.16 * jnp.eye(1), B=jnp.array([[1.2]]),
    )  # fmt: skip
    _, y = sdessm.simulate(jax.random.key(3), truth, times, inputs=v)
    lti = LTISDE(*truth, times=times, inputs=v)
    assert np.isclose(lti.log_prob(y), sdessm.log_likelihood(truth, y, times, inputs=v))
    mcmc = MCMC(NUTS(_driven_ou), num_warmup=200, num_samples=200, progress_bar=False)
    with jax.numpy_dtype_promotion("standard"):  # NumPyro's NUTS mixes int and float
        mcmc.run(jax.random.key(2), times, y=y, inputs=v)
    post = mcmc.get_samples()
    for name, value in (("b", 1.2), ("theta", 0.5)):
        draws = np.asarray(post[name])
        assert abs(draws.mean() - value) < 3 * draws.std(), (name, draws.mean(), draws.std())
