"""Kalman filter and RTS smoother against dense Gaussian conditioning and finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import (
    dense_filter,
    dense_smoother,
    linear_sde,
    moment_pairs,
    random_problem,
    sde_params,
    with_missing,
)

import sdessm

RTOL, ATOL = 1e-8, 1e-10

CASES = {
    "uniform": dict(),
    "missing": dict(missing=0.3),
    "irregular": dict(irregular=True),
    "per_step_emissions": dict(per_step_emissions=True, missing=0.2),
    "irregular_missing": dict(irregular=True, missing=0.4),
}


def _lgssm(arrays):
    return sdessm.LGSSMParams(*(np.asarray(a) for a in arrays))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d, p", [(1, 1), (2, 3), (3, 2)])
def test_smoother_matches_dense_gaussian(rng, case, d, p):
    _, _, arrays, y = random_problem(rng, 7, d, p, **CASES[case])
    got = sdessm.rts_smoother(_lgssm(arrays), y)
    means, covs, cross, loglik = dense_smoother(arrays, y)
    np.testing.assert_allclose(got.log_likelihood, loglik, rtol=RTOL)
    np.testing.assert_allclose(got.smoothed_means, means, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.smoothed_covs, covs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.cross_covs, cross, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CASES)
def test_filter_matches_dense_gaussian(rng, case):
    _, _, arrays, y = random_problem(rng, 6, 2, 2, **CASES[case])
    got = sdessm.kalman_filter(_lgssm(arrays), y)
    fm, fc, pm, pc = dense_filter(arrays, y)
    np.testing.assert_allclose(got.filtered_means, fm, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.filtered_covs, fc, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.predicted_means, pm, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.predicted_covs, pc, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.log_likelihood, dense_smoother(arrays, y)[3], rtol=RTOL)


@pytest.mark.parametrize("case", CASES)
def test_sequences_sharing_a_mask_match_dense_gaussian(rng, case):
    """Sequences with one NaN mask (all complete, or the same entries missing, trailing padding
    included) share one covariance recursion: each must still be its own dense posterior."""
    _, _, arrays, y = random_problem(rng, 6, 2, 2, **CASES[case])
    ys = rng.normal(size=(3, 6, 2)) * 2.0
    ys[:, np.isnan(y)] = np.nan
    if CASES[case].get("missing"):
        ys[:, -1] = np.nan  # padding
    filt = sdessm.kalman_filter(_lgssm(arrays), ys)
    smooth = sdessm.rts_smoother(_lgssm(arrays), ys)
    alone = sdessm.log_likelihood(_lgssm(arrays), ys)
    for b in range(3):
        pairs, loglik = moment_pairs(filt, smooth, arrays, ys[b], b)
        for got, want in pairs:
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(filt.log_likelihood[b], loglik, rtol=RTOL)
        np.testing.assert_allclose(smooth.log_likelihood[b], loglik, rtol=RTOL)
        np.testing.assert_allclose(alone[b], loglik, rtol=RTOL)


@pytest.mark.parametrize("irregular", [False, True])
def test_sde_form_equals_discrete_form(rng, irregular):
    sde, times, arrays, y = random_problem(rng, 8, 2, 2, irregular=irregular, missing=0.2)
    params = sde_params(sde)
    got = sdessm.rts_smoother(params, y, times)
    means, covs, cross, loglik = dense_smoother(arrays, y)  # arrays built with SciPy + quadrature
    np.testing.assert_allclose(got.log_likelihood, loglik, rtol=1e-8)
    np.testing.assert_allclose(got.smoothed_means, means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got.smoothed_covs, covs, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got.cross_covs, cross, rtol=1e-8, atol=1e-10)
    if not irregular:
        by_dt = sdessm.rts_smoother(params, y, dt=times[1] - times[0])
        np.testing.assert_allclose(by_dt.smoothed_means, got.smoothed_means, rtol=1e-10)


def test_several_sequences_shared_and_own_times(rng):
    sde, times, arrays, _ = random_problem(rng, 6, 2, 1, irregular=True)
    params = sde_params(sde)
    ys = rng.normal(size=(3, 6, 1))
    ys[0, 2] = ys[1, 4:] = np.nan  # the second sequence is shorter: NaN padding
    got = sdessm.rts_smoother(params, ys, times)
    assert got.smoothed_means.shape == (3, 6, 2) and got.log_likelihood.shape == (3,)
    for b in range(3):
        means, covs, cross, loglik = dense_smoother(arrays, ys[b])
        np.testing.assert_allclose(got.log_likelihood[b], loglik, rtol=RTOL)
        np.testing.assert_allclose(got.smoothed_means[b], means, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got.cross_covs[b], cross, rtol=RTOL, atol=ATOL)
    # padding: the short sequence has the likelihood of its first four observations alone
    short = sdessm.kalman_filter(params, ys[1, :4], times[:4])
    np.testing.assert_allclose(got.log_likelihood[1], short.log_likelihood, rtol=1e-12)
    # per-sequence time grids (B, T)
    grids = np.stack([times, times * 1.5, times + 0.2])
    own = sdessm.rts_smoother(params, ys, grids)
    for b in range(3):
        one = sdessm.rts_smoother(params, ys[b], grids[b])
        np.testing.assert_allclose(own.smoothed_means[b], one.smoothed_means, rtol=1e-12)
        np.testing.assert_allclose(own.log_likelihood[b], one.log_likelihood, rtol=1e-12)


def test_entirely_missing_sequence_is_the_prior(rng):
    sde, times, arrays, _ = random_problem(rng, 5, 2, 2, irregular=True)
    y = np.full((5, 2), np.nan)
    got = sdessm.rts_smoother(_lgssm(arrays), y)
    means, covs, _, _ = dense_smoother(arrays, y)
    assert float(got.log_likelihood) == 0.0
    np.testing.assert_allclose(got.smoothed_means, means, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.smoothed_covs, covs, rtol=RTOL, atol=ATOL)


def test_single_time_step(rng):
    _, _, arrays, y = random_problem(rng, 2, 2, 2)
    one = (arrays[0][:0], arrays[1][:0], *arrays[2:])
    got = sdessm.rts_smoother(_lgssm(one), y[:1])
    means, covs, _, loglik = dense_smoother(
        arrays, np.concatenate([y[:1], np.full((1, 2), np.nan)])
    )
    np.testing.assert_allclose(got.log_likelihood, loglik, rtol=RTOL)
    np.testing.assert_allclose(got.smoothed_means[0], means[0], rtol=RTOL)
    assert got.cross_covs.shape == (0, 2, 2)


def test_jit_and_vmap_agree(rng):
    _, _, arrays, _ = random_problem(rng, 9, 2, 2, per_step_emissions=True)
    params = _lgssm(arrays)
    ys = with_missing(rng, rng.normal(size=(4, 9, 2)), 0.25)
    batch = sdessm.rts_smoother(params, ys)
    jitted = jax.jit(sdessm.rts_smoother)(params, ys)
    vmapped = jax.vmap(sdessm.rts_smoother, in_axes=(None, 0))(params, jnp.asarray(ys))
    for a, b, c in zip(batch, jitted, vmapped, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-14)


def test_grad_of_loglik_matches_finite_differences(rng):
    sde, times, _, y = random_problem(rng, 10, 2, 2, irregular=True, missing=0.2)
    params = sde_params(sde, as_jax=True)

    def loglik(F, L, R):
        return sdessm.kalman_filter(params._replace(F=F, L=L, R=R), y, times).log_likelihood

    args = (params.F, params.L, params.R)
    grads = jax.grad(loglik, argnums=(0, 1, 2))(*args)
    loglik = jax.jit(loglik)
    eps = 1e-6
    for i, (x, g) in enumerate(zip(args, grads, strict=True)):
        num = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            E = np.zeros(x.shape)
            E[idx] = eps
            if i == 2:  # keep R symmetric: perturb both triangles, derivative along that direction
                E = E + E.T if idx[0] != idx[1] else E
            shifted = [np.asarray(a) for a in args]
            up, down = list(shifted), list(shifted)
            up[i], down[i] = shifted[i] + E, shifted[i] - E
            num[idx] = (loglik(*up) - loglik(*down)) / (2 * eps)
        if i == 2:
            g = np.asarray(g)
            g = np.where(np.eye(g.shape[0], dtype=bool), g, g + g.T)
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


def test_loglik_is_jittable_in_the_sde_parameters(rng):
    sde, times, arrays, y = random_problem(rng, 6, 2, 2, irregular=True)
    params = sde_params(sde)
    f = jax.jit(lambda F: sdessm.kalman_filter(params._replace(F=F), y, times).log_likelihood)
    np.testing.assert_allclose(f(jnp.asarray(sde["F"])), dense_smoother(arrays, y)[3], rtol=1e-8)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d, p", [(1, 1), (2, 3), (3, 2)])
def test_log_likelihood_alone_matches_dense_gaussian(rng, case, d, p):
    """The fast path (whitened sequential scalar updates), complete or masked, in and out of jit."""
    _, _, arrays, y = random_problem(rng, 7, d, p, **CASES[case])
    loglik = dense_smoother(arrays, y)[3]
    np.testing.assert_allclose(sdessm.log_likelihood(_lgssm(arrays), y), loglik, rtol=RTOL)
    # under jit y is traced, so the masked branch runs even without NaN
    traced = jax.jit(sdessm.log_likelihood)(_lgssm(arrays), jnp.asarray(y))
    np.testing.assert_allclose(traced, loglik, rtol=RTOL)


def test_log_likelihood_alone_sde_form_sequences_and_gradient(rng):
    sde, times, arrays, _ = random_problem(rng, 8, 3, 2, irregular=True)
    params = sde_params(sde, as_jax=True)
    ys = rng.normal(size=(3, 8, 2))
    ys[0, 2, 1] = ys[1, 5:] = np.nan
    got = sdessm.log_likelihood(params, ys, times)
    for b in range(3):
        np.testing.assert_allclose(got[b], dense_smoother(arrays, ys[b])[3], rtol=RTOL)
    grids = np.stack([times, times * 1.5, times + 0.2])
    np.testing.assert_allclose(
        sdessm.log_likelihood(params, ys, grids),
        sdessm.kalman_filter(params, ys, grids).log_likelihood,
        rtol=1e-12,
    )
    y = rng.normal(size=(8, 2))  # complete: R is factorised once, outside the recursion

    def both(F, R):
        p = params._replace(F=F, R=R)
        return sdessm.log_likelihood(p, y, times), sdessm.kalman_filter(p, y, times).log_likelihood

    fast = jax.grad(lambda F, R: both(F, R)[0], argnums=(0, 1))(params.F, params.R)
    full = jax.grad(lambda F, R: both(F, R)[1], argnums=(0, 1))(params.F, params.R)
    for a, b in zip(fast, full, strict=True):  # the Joseph-form filter's gradient is checked
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)  # against finite differences


@pytest.mark.parametrize("slow_mode", [False, True])
def test_log_likelihood_steady_state_form(rng, slow_mode):
    """Long complete uniform data: the steady-state form (or, where the Riccati recursion has not
    converged in STEADY_STEPS, the fallback) equals the full filter, values and gradients."""
    from sdessm.kalman import _loglik_steady
    from sdessm.recursion import STEADY_STEPS

    F = np.array([[-0.05, 1.0], [-1.0, -0.3]])
    if slow_mode:  # a mode that relaxes over ~1e4 steps and a vague start: no steady state yet
        F = np.array([[-1e-4, 0.0], [0.0, -0.5]])
    params = sdessm.SDEParams(
        F=jnp.asarray(F),
        L=jnp.array([[0.0], [0.5]]) if not slow_mode else 0.01 * jnp.eye(2),
        H=jnp.array([[1.0, 0.0], [0.3, 1.0]]),
        u=jnp.array([0.2, -0.1]),
        R=jnp.array([[0.04, 0.01], [0.01, 0.09]]),
        mu1=jnp.zeros(2),
        P1=jnp.eye(2) * (1e4 if slow_mode else 1.0),
    )
    T = 3 * STEADY_STEPS
    _, y = sdessm.simulate(jax.random.key(5), params, dt=0.1, num_timesteps=T)
    y = np.asarray(y)
    lg = sdessm.discretize_params(params, dt=0.1)
    C = np.linalg.cholesky(np.asarray(lg.R))
    H_w, y_w = np.linalg.solve(C, lg.H), np.linalg.solve(C, (y - np.asarray(lg.u)).T).T
    _, converged = _loglik_steady(lg.A, lg.Sigma, H_w, y_w, lg.mu1, lg.P1, STEADY_STEPS)
    assert bool(converged) != slow_mode  # both branches are exercised

    def both(R):
        p = params._replace(R=R)
        return sdessm.log_likelihood(p, y, dt=0.1), sdessm.kalman_filter(
            p, y, dt=0.1
        ).log_likelihood

    fast, full = both(params.R)
    np.testing.assert_allclose(fast, full, rtol=1e-11)
    g_fast = jax.grad(lambda R: both(R)[0])(params.R)
    g_full = jax.grad(lambda R: both(R)[1])(params.R)
    np.testing.assert_allclose(g_fast, g_full, rtol=1e-8, atol=1e-8)
    # several sequences share the recursion (and its steady state) but keep their own values
    ys = np.stack([y, y[::-1], 0.5 * y])
    each = [sdessm.kalman_filter(params, one, dt=0.1).log_likelihood for one in ys]
    np.testing.assert_allclose(sdessm.log_likelihood(params, ys, dt=0.1), each, rtol=1e-11)


def _params(**overrides):
    base = dict(
        F=-np.eye(2),
        L=np.eye(2),
        H=np.ones((1, 2)),
        u=np.zeros(1),
        R=np.eye(1),
        mu1=np.zeros(2),
        P1=np.eye(2),
    )
    return sdessm.SDEParams(**(base | overrides))


Y = np.zeros((5, 1))
TIMES = np.arange(5.0)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: sdessm.kalman_filter(_params(F=np.eye(3)), Y, TIMES),
            ValueError,
            "`F` must have shape (..., 2, 2) (d = 2 from `mu1`); got (3, 3)",
        ),
        (
            lambda: sdessm.kalman_filter(_params(H=np.ones((1, 3))), Y, TIMES),
            ValueError,
            "`H` must have shape (..., p, 2) (d = 2 from `mu1`); got (1, 3)",
        ),
        (
            lambda: sdessm.kalman_filter(_params(R=np.eye(2)), Y, TIMES),
            ValueError,
            "`R` must have shape (..., 1, 1) (p = 1 from `H`); got (2, 2)",
        ),
        (
            lambda: sdessm.kalman_filter(_params(R=-np.eye(1)), Y, TIMES),
            ValueError,
            "`R` must be positive semi-definite",
        ),
        (
            lambda: sdessm.kalman_filter(_params(P1=np.array([[1.0, 2.0], [0.0, 1.0]])), Y, TIMES),
            ValueError,
            "`P1` must be symmetric",
        ),
        (
            lambda: sdessm.kalman_filter(_params(P1=np.array([[1.0, 2.0], [2.0, 1.0]])), Y, TIMES),
            ValueError,
            "`P1` must be positive semi-definite",
        ),
        (
            lambda: sdessm.kalman_filter(_params(mu1=np.array([np.inf, 0.0])), Y, TIMES),
            ValueError,
            "`mu1` must be finite",
        ),
        (
            lambda: sdessm.kalman_filter(_params(F=np.full((2, 2), np.nan)), Y, TIMES),
            ValueError,
            "`F` must be finite",
        ),
        (
            lambda: sdessm.kalman_filter(_params(), np.zeros((5, 2)), TIMES),
            ValueError,
            "`y` has 2 columns",
        ),
        (
            lambda: sdessm.kalman_filter(_params(), np.zeros(5), TIMES),
            ValueError,
            "`y` must have shape (T, p)",
        ),
        (
            lambda: sdessm.kalman_filter(_params(), np.array([[0.0], [np.inf]]), TIMES[:2]),
            ValueError,
            "`y` contains inf",
        ),
        (
            lambda: sdessm.kalman_filter(_params(), Y, TIMES[:4]),
            ValueError,
            "`times` has 4 entries",
        ),
        (
            lambda: sdessm.kalman_filter(_params(), Y, TIMES[::-1]),
            ValueError,
            "strictly increasing",
        ),
        (lambda: sdessm.kalman_filter(_params(), Y), ValueError, "needs the observation `times`"),
        (lambda: sdessm.kalman_filter(_params(), Y, dt=0.0), ValueError, "`dt` must be > 0"),
        (lambda: sdessm.kalman_filter(_params(), Y, TIMES, dt=1.0), ValueError, "not both"),
        (
            lambda: sdessm.kalman_filter(_params(), np.zeros((2, 5, 1)), np.ones((3, 5)).cumsum(1)),
            ValueError,
            "one time grid per sequence",
        ),
        (
            lambda: sdessm.kalman_filter(_params().discretize(dt=1.0), Y, TIMES),
            ValueError,
            "already holds its steps",
        ),
        (
            lambda: sdessm.kalman_filter(_params().discretize(np.array([0.0, 1.0, 3.0, 4.0])), Y),
            ValueError,
            "must be 4 (T-1)",
        ),
        (
            lambda: sdessm.kalman_filter(
                _params().discretize(dt=1.0)._replace(Sigma=-np.eye(2)), Y
            ),
            ValueError,
            "`Sigma` must be positive semi-definite",
        ),
        (
            lambda: sdessm.kalman_filter(
                _params().discretize(dt=1.0)._replace(u=np.zeros((3, 1))), Y
            ),
            ValueError,
            "`u` has a leading axis of 3 times",
        ),
        (
            lambda: sdessm.kalman_filter(_params().discretize(dt=1.0)._replace(A=np.eye(3)), Y),
            ValueError,
            "`A` must have shape (..., 2, 2) (d = 2 from `mu1`); got (3, 3)",
        ),
        (
            lambda: sdessm.kalman_filter(
                _params().discretize(dt=1.0)._replace(A=np.ones((2, 3, 2, 2))), Y
            ),
            ValueError,
            "`A` must have shape (2, 2) or (T-1, 2, 2)",
        ),
        (
            lambda: sdessm.kalman_filter({"F": 1}, Y),
            TypeError,
            "`params` must be SDEParams or LGSSMParams",
        ),
        (
            lambda: sdessm.kalman_filter(_params(), np.array([["a"]] * 5), TIMES),
            TypeError,
            "`y` must be a numeric array",
        ),
    ],
)
def test_bad_input(call, error, message):
    import re

    with pytest.raises(error, match=re.escape(message)):
        call()


def test_nan_in_y_is_never_an_error():
    y = np.full((5, 1), np.nan)
    y[2] = 1.0
    res = sdessm.kalman_filter(_params(), y, TIMES)
    assert np.isfinite(res.log_likelihood)


def test_entry_points_compute_in_float64_when_x64_is_off(rng):
    sde, times, arrays, y = random_problem(rng, 6, 2, 2, irregular=True)
    with jax.enable_x64(False):
        params = sde_params(sde, as_jax=True)  # float32
        res = sdessm.kalman_filter(params, y, times)
    assert res.log_likelihood.dtype == np.float64
    ref = dense_smoother(arrays, y)[3]
    np.testing.assert_allclose(res.log_likelihood, ref, rtol=1e-6)  # inputs were rounded to f32


def test_q_of_numpy_parameters_stays_float64_when_x64_is_off(rng):
    """What `fit_em` returns holds NumPy float64 arrays; reading `.Q` must not round them."""
    import warnings

    L = rng.normal(size=(2, 2))
    params = linear_sde(-np.eye(2), L)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter("error")
        Q = params.Q
    assert Q.dtype == np.float64
    np.testing.assert_array_equal(Q, L @ L.T)


def test_log_likelihood_of_a_traced_y_takes_the_complete_path_when_it_can(rng):
    """A traced `y` decides its path at run time (`lax.cond`): values and gradients equal those
    with `y` closed over, with and without NaN; `complete` states the path outright."""
    sde, _, _, y = random_problem(rng, 30, 2, 2)
    params = sde_params(sde)
    y_nan = np.array(y)
    y_nan[4, 0] = np.nan

    def f(F, y, **kw):
        return sdessm.log_likelihood(params._replace(F=F), y, dt=0.2, **kw)

    A = jnp.asarray(params.F)
    traced = jax.jit(jax.value_and_grad(f))
    for data in (y, y_nan):
        closed = jax.value_and_grad(lambda A, data=data: f(A, data))(A)
        for got in (traced(A, data), jax.value_and_grad(f)(A, data, complete=False)):
            np.testing.assert_allclose(got[0], closed[0], rtol=1e-12)
            np.testing.assert_allclose(got[1], closed[1], rtol=1e-10, atol=1e-12)
    promised = jax.jit(jax.value_and_grad(functools.partial(f, complete=True)))(A, y)
    np.testing.assert_allclose(promised[0], traced(A, y)[0], rtol=1e-12)
    conds = [  # the run-time choice is one `cond` more than the promised path
        str(jax.make_jaxpr(functools.partial(f, **kw))(A, y)).count("cond[")
        for kw in ({}, {"complete": True})
    ]
    assert conds[0] == conds[1] + 1
    with pytest.raises(ValueError, match="`complete=True` promises no NaN"):
        f(A, y_nan, complete=True)
    with pytest.raises(ValueError, match="`complete` must be None, True or False"):
        f(A, y, complete="yes")
