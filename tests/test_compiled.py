"""The compiled CPU kernels (`sdessm.compiled`, `method="compiled"`) against independent references.

What is compared with what:

- filter, smoother and log-likelihood values (filtered and predicted moments, smoothed moments,
  lag-one cross-covariances) against the dense joint Gaussian of tests/reference.py (NumPy/SciPy
  conditioning of all states and observations), on shared, per-step-transition (irregular SDE
  times), per-step-emission models and several sequences with their own NaN masks;
- the kernel's gradient of the log-likelihood (de Jong's backward recursion) against `jax.grad`
  of the pure-JAX `method="sequential"` path, and against central finite differences of the
  dense-Gaussian log-likelihood along random directions (no JAX autodiff involved);
- singular covariances (a known initial state, a rank-one transition noise), second derivatives
  and forward-mode derivatives of the filter (which come from the pure-JAX recursions through
  `custom_jvp`), `jit` and `vmap`, against the sequential path;
- the fallbacks (float32, T = 1, known inputs) and errors (an unknown method, the kernels
  switched off with `SDESSM_COMPILED=off` in a subprocess, a non-positive-definite innovation
  covariance).

The module skips when the kernels are not built, unless `SDESSM_REQUIRE_COMPILED` is set (as in
CI): then `test_kernels_are_available` fails with `sdessm.compiled.why_unavailable()`.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from reference import (
    dense_filter,
    dense_posterior,
    dense_smoother,
    moment_pairs,
    quadrature_sigma,
    random_driven_problem,
    random_problem,
    sde_params,
    with_missing,
)

import sdessm
from sdessm import compiled

REQUIRED = bool(os.environ.get("SDESSM_REQUIRE_COMPILED"))
AVAILABLE = compiled.available()

if not AVAILABLE and not REQUIRED:
    pytest.skip(
        f"the compiled kernels are unavailable ({compiled.why_unavailable()}); set "
        "SDESSM_REQUIRE_COMPILED=1 to make that a failure",
        allow_module_level=True,
    )

#: every test but the availability check and the subprocess one needs the kernels; without them
#: (SDESSM_REQUIRE_COMPILED set) they skip, and `test_kernels_are_available` alone fails
needs_kernels = pytest.mark.skipif(
    not AVAILABLE, reason=f"compiled kernels unavailable: {compiled.why_unavailable()}"
)

RTOL, ATOL = 1e-9, 1e-11
GRAD_RTOL = 1e-8


def test_kernels_are_available():
    assert AVAILABLE, (
        "SDESSM_REQUIRE_COMPILED is set but the compiled kernels are unavailable: "
        f"{compiled.why_unavailable()}"
    )


# --------------------------------------------------------------------------- helpers


def _lgssm(arrays, as_jax=False):
    conv = jnp.asarray if as_jax else np.asarray
    return sdessm.LGSSMParams(*(conv(a) for a in arrays))


def _close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


def _gaps(rng, y, fraction=0.25):
    """Random missing entries, plus the first and last rows wholly missing, a partly missing
    second row and a wholly missing middle row."""
    y = with_missing(rng, y, fraction)
    y[0] = y[-1] = np.nan
    y[1] = rng.normal(size=y.shape[1]) * 2.0
    y[1, 0] = np.nan
    y[len(y) // 2] = np.nan
    return y


def _sym(G):
    G = np.asarray(G)
    return 0.5 * (G + np.swapaxes(G, -1, -2))


#: the covariance fields of each parameter class (their gradients are compared symmetrised)
COVARIANCES = {"Sigma", "R", "P1"}


def _compare_grads(got, want, fields, rtol=GRAD_RTOL):
    """Field by field, symmetrising the covariances, to `rtol` of the field's largest entry."""
    for name in fields:
        g, w = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        if name in COVARIANCES:
            g, w = _sym(g), _sym(w)
        assert np.all(np.isfinite(g)), name
        scale = max(np.max(np.abs(w)), 1e-300)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=name)


def _loglik(method):
    """The log-likelihood of (params, y) by `method`; y holds NaN, so the masked path is taken
    outright (`complete=False`: no run-time choice of paths for a traced y to compile)."""
    return lambda params, y: sdessm.log_likelihood(params, y, method=method, complete=False)


def _sde_loglik(method):
    """The log-likelihood of (SDEParams, y, times, inputs) by `method` (masked path)."""
    return lambda params, y, times, inputs: sdessm.log_likelihood(
        params, y, times, inputs=inputs, method=method, complete=False
    )


#: jitted gradients shared by the tests, so that a program of the same shapes compiles once:
#: with respect to (LGSSMParams, y), and value and gradient with respect to SDEParams (y, times
#: and inputs as arguments)
LGSSM_GRAD = {m: jax.jit(jax.grad(_loglik(m), argnums=(0, 1))) for m in ("compiled", "sequential")}
SDE_GRAD = {m: jax.jit(jax.value_and_grad(_sde_loglik(m))) for m in ("compiled", "sequential")}

LGSSM_FIELDS = ("A", "Sigma", "H", "u", "R", "mu1", "P1")
SDE_FIELDS = ("F", "L", "H", "u", "R", "mu1", "P1")


# --------------------------------------------------------------------------- 1. dense Gaussian


def _case(rng, case, T=8, d=2, p=2):
    """(lgssm arrays for the dense reference, the params passed to sdessm, extra args, y)."""
    irregular = case == "per_step_transitions"
    sde, times, arrays, y = random_problem(
        rng, T, d, p, irregular=irregular, per_step_emissions=case == "per_step_emissions"
    )
    y = _gaps(rng, y)
    if case in ("shared", "per_step_emissions"):
        arrays = (arrays[0][0], arrays[1][0], *arrays[2:])  # one (d, d) A and Sigma
    if case == "sde_irregular":
        return arrays, sde_params(sde), (times,), y
    return arrays, _lgssm(arrays), (), y


CASES = ["shared", "per_step_transitions", "per_step_emissions"]


@needs_kernels
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d, p", [(1, 1), (3, 2)])
def test_filter_smoother_loglik_match_dense_gaussian(rng, case, d, p):
    arrays, params, _, y = _case(rng, case, d=d, p=p)
    tv = params.time_varying()
    assert tv["A"] == tv["Sigma"] == (case == "per_step_transitions")
    assert tv["H"] == tv["u"] == tv["R"] == (case == "per_step_emissions")
    filt = sdessm.kalman_filter(params, y, method="compiled")
    smooth = sdessm.rts_smoother(params, y, method="compiled")
    pairs, loglik = moment_pairs(filt, smooth, arrays, y)
    for got, want in pairs:
        _close(got, want)
    _close(filt.log_likelihood, loglik)
    _close(smooth.log_likelihood, loglik)
    _close(sdessm.log_likelihood(params, y, method="compiled"), loglik)
    _close(sdessm.log_likelihood(params, y, method="auto"), loglik)


@needs_kernels
def test_sde_on_irregular_times_matches_dense_gaussian(rng):
    """An SDEParams on irregular times: discretised by sdessm (per-step A, Sigma), the reference
    built from SciPy's expm and quadrature."""
    arrays, params, (times,), y = _case(rng, "sde_irregular", d=2, p=2)
    means, covs, cross, loglik = dense_smoother(arrays, y)
    fm, fc, _, _ = dense_filter(arrays, y)
    filt = sdessm.kalman_filter(params, y, times, method="compiled")
    _close(filt.filtered_means, fm, rtol=1e-8, atol=1e-10)
    _close(filt.filtered_covs, fc, rtol=1e-8, atol=1e-10)
    smooth = sdessm.rts_smoother(params, y, times, method="compiled")
    _close(smooth.smoothed_means, means, rtol=1e-8, atol=1e-10)
    _close(smooth.smoothed_covs, covs, rtol=1e-8, atol=1e-10)
    _close(smooth.cross_covs, cross, rtol=1e-8, atol=1e-10)
    _close(sdessm.log_likelihood(params, y, times, method="compiled"), loglik, rtol=1e-8)


@needs_kernels
def test_several_sequences_with_their_own_masks_match_dense_gaussian(rng):
    """(B, T, p) data whose sequences have different NaN masks (one wholly missing, one with a
    trailing padding of NaN), with shared per-step parameters and with one time grid each."""
    sde, times, arrays, _ = random_problem(rng, 7, 2, 2, irregular=True)
    ys = rng.normal(size=(3, 7, 2)) * 2.0
    ys[0] = _gaps(rng, ys[0])
    ys[1, 4:] = np.nan
    ys[1, 2, 1] = np.nan
    ys[2] = np.nan
    params = _lgssm(arrays)
    filt = sdessm.kalman_filter(params, ys, method="compiled")
    smooth = sdessm.rts_smoother(params, ys, method="compiled")
    alone = sdessm.log_likelihood(params, ys, method="compiled")
    assert alone.shape == (3,) and smooth.smoothed_means.shape == (3, 7, 2)
    for b in range(3):
        pairs, loglik = moment_pairs(filt, smooth, arrays, ys[b], b)
        for got, want in pairs:
            _close(got, want)
        for value in (filt.log_likelihood[b], smooth.log_likelihood[b], alone[b]):
            _close(value, loglik)
    assert float(alone[2]) == 0.0

    # one time grid per sequence: params batched along with y
    params = sde_params(sde)
    grids = np.stack([times, times * 1.5, times + 0.2])
    smooth = sdessm.rts_smoother(params, ys, grids, method="compiled")
    alone = sdessm.log_likelihood(params, ys, grids, method="compiled")
    Q = sde["L"] @ sde["L"].T
    for b in range(2):  # the third is wholly missing
        steps = np.diff(grids[b])
        A = np.stack([scipy.linalg.expm(sde["F"] * s) for s in steps])
        Sigma = np.stack([quadrature_sigma(sde["F"], Q, s) for s in steps])
        own = (A, Sigma, *arrays[2:])
        means, covs, cross, loglik = dense_smoother(own, ys[b])
        _close(smooth.smoothed_means[b], means, rtol=1e-8, atol=1e-10)
        _close(smooth.smoothed_covs[b], covs, rtol=1e-8, atol=1e-10)
        _close(smooth.cross_covs[b], cross, rtol=1e-8, atol=1e-10)
        _close(alone[b], loglik, rtol=1e-8)


# --------------------------------------------------------------------------- 2., 3. gradients


def _gradient_case(rng, case, T=8, d=2, p=2):
    """Random LGSSMParams (JAX arrays) with the given per-step fields, and y with NaN."""
    per_step_transitions = case in ("per_step_transitions", "all_per_step")
    per_step_emissions = case in ("per_step_emissions", "all_per_step")
    _, _, arrays, y = random_problem(
        rng, T, d, p, irregular=per_step_transitions, per_step_emissions=per_step_emissions
    )
    if not per_step_transitions:
        arrays = (arrays[0][0], arrays[1][0], *arrays[2:])
    return arrays, _lgssm(arrays, as_jax=True), _gaps(rng, y)


def _direction(rng, params, y):
    """A random direction in (params, y): symmetric for the covariances, zero at NaN of y."""
    fields = {}
    for name in LGSSM_FIELDS:
        V = rng.normal(size=np.shape(getattr(params, name)))
        fields[name] = _sym(V) if name in COVARIANCES else V
    Vy = np.where(np.isnan(y), 0.0, rng.normal(size=y.shape))
    return fields, Vy


def _dense_loglik(params, y):
    return dense_posterior(tuple(np.asarray(a) for a in params[:7]), y)[2]


@needs_kernels
@pytest.mark.parametrize("case", ["shared", "all_per_step"])
def test_gradient_matches_sequential_and_dense_finite_differences(rng, case):
    """`all_per_step`: A, Sigma (T - 1 of each), H, u and R (T of each) all per step."""
    arrays, params, y = _gradient_case(rng, case)
    y_j = jnp.asarray(y)
    g_c, gy_c = LGSSM_GRAD["compiled"](params, y_j)
    g_s, gy_s = LGSSM_GRAD["sequential"](params, y_j)
    for name in LGSSM_FIELDS:
        assert np.shape(getattr(g_c, name)) == np.shape(getattr(params, name)), name
    _compare_grads(g_c, g_s, LGSSM_FIELDS)
    missing = np.isnan(y)
    gy_c, gy_s = np.asarray(gy_c), np.asarray(gy_s)
    assert np.all(gy_c[missing] == 0.0)  # a missing entry has no influence
    scale = np.max(np.abs(gy_s[~missing]))
    _close(gy_c[~missing], gy_s[~missing], rtol=GRAD_RTOL, atol=GRAD_RTOL * scale)

    # central differences of the dense Gaussian along random directions, independent of JAX
    eps = 1e-5
    for _ in range(3):
        V, Vy = _direction(rng, params, y)
        slope = sum(np.vdot(np.asarray(getattr(g_c, k)), V[k]) for k in LGSSM_FIELDS)
        slope += np.vdot(np.where(missing, 0.0, gy_c), Vy)

        def shifted(sign, V=V, Vy=Vy):
            moved = [np.asarray(getattr(params, k)) + sign * eps * V[k] for k in LGSSM_FIELDS]
            return _dense_loglik(moved, y + sign * eps * Vy)

        numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
        np.testing.assert_allclose(slope, numeric, rtol=1e-6, atol=1e-7)


def _sde_case(rng, one_noise):
    """A random SDE (d = 2, p = 2) on irregular times with y holding NaN; `one_noise`: a
    CARMA(2, 0)-like state (one noise, into the velocity: Q of rank one) from a known initial
    state (P1 = 0)."""
    sde, times, _, y = random_problem(rng, 10, 2, 2, irregular=True)
    if one_noise:
        sde |= dict(
            F=np.array([[0.0, 1.0], [-1.2, -0.7]]),
            L=np.array([[0.0, 0.0], [0.0, 0.8]]),
            P1=np.zeros((2, 2)),
        )
    return sde_params(sde, as_jax=True), times, _gaps(rng, y)


@needs_kernels
@pytest.mark.parametrize("one_noise", [False, True])
def test_gradient_with_respect_to_sde_params_on_irregular_times(rng, one_noise):
    params, times, y = _sde_case(rng, one_noise)
    args = (jnp.asarray(y), jnp.asarray(times), None)
    value, g_c = SDE_GRAD["compiled"](params, *args)
    s_value, g_s = SDE_GRAD["sequential"](params, *args)
    assert np.isfinite(value)
    _close(value, s_value, rtol=1e-11)
    _compare_grads(g_c, g_s, SDE_FIELDS)


# ------------------------------------------------------------------------- 4. singular covariances


def _singular_model(h=0.5):
    """A white-noise-acceleration model: position and velocity driven by one noise (Sigma of
    rank one), the position seen by two sensors, a known initial state (P1 = 0). (The shapes
    of the `shared` gradient case: the jitted gradients are compiled once.)"""
    A = np.array([[1.0, h], [0.0, 1.0]])
    b = np.array([h**2 / 2, h])
    return sdessm.LGSSMParams(
        A=jnp.asarray(A),
        Sigma=jnp.asarray(0.4 * np.outer(b, b)),
        H=jnp.array([[1.0, 0.0], [0.8, 0.0]]),
        u=jnp.array([0.1, -0.3]),
        R=jnp.array([[0.05, 0.01], [0.01, 0.08]]),
        mu1=jnp.array([0.3, -0.2]),
        P1=jnp.zeros((2, 2)),
    )


@needs_kernels
@pytest.mark.parametrize("first_missing", [False, True])
def test_singular_initial_and_transition_covariances(rng, first_missing):
    params = _singular_model()
    assert np.linalg.matrix_rank(np.asarray(params.Sigma)) == 1
    y = rng.normal(size=(8, 2))
    y[5] = np.nan
    y[3, 1] = np.nan
    if first_missing:
        y[0] = np.nan
    ref = _dense_loglik(params, y)
    for fn in (_loglik("compiled"), _loglik("sequential")):
        _close(fn(params, y), ref)
    (g_c, gy_c), (g_s, gy_s) = (LGSSM_GRAD[m](params, jnp.asarray(y)) for m in LGSSM_GRAD)
    _compare_grads(g_c, g_s, LGSSM_FIELDS)
    obs = ~np.isnan(y)
    _close(np.asarray(gy_c)[obs], np.asarray(gy_s)[obs], rtol=1e-8, atol=1e-10)
    # the smoother of a known initial state: x_1 | y is x_1 itself
    means, covs, cross, loglik = dense_smoother(tuple(np.asarray(a) for a in params[:7]), y)
    smooth = sdessm.rts_smoother(params, y, method="compiled")
    _close(smooth.smoothed_means, means, atol=1e-10)
    _close(smooth.smoothed_covs, covs, atol=1e-10)
    _close(smooth.cross_covs, cross, atol=1e-10)
    _close(smooth.smoothed_means[0], params.mu1, atol=1e-12)


# --------------------------------------------------------------------------- 5. higher derivatives


def _from_theta(base, theta):
    """A small parameter vector: a scale of A, the log of R's diagonal, mu1[0], a shift of H."""
    return base._replace(
        A=base.A * theta[0],
        R=base.R * jnp.exp(theta[1]),
        mu1=base.mu1.at[0].add(theta[2]),
        H=base.H + theta[3],
    )


@needs_kernels
def test_hessian_and_forward_derivatives_match_sequential(rng):
    """Second derivatives of the log-likelihood, and derivatives of the filter's outputs, come
    from the pure-JAX recursions through custom_jvp: they equal the sequential path's (a scalar
    state keeps the compilation short)."""
    _, params, y = _gradient_case(rng, "per_step_transitions", T=6, d=1, p=1)
    theta = jnp.array([0.95, 0.1, 0.2, -0.1])

    def loglik(method):
        return lambda t: sdessm.log_likelihood(_from_theta(params, t), y, method=method)

    H_c = jax.jit(jax.hessian(loglik("compiled")))(theta)
    H_s = jax.jit(jax.hessian(loglik("sequential")))(theta)
    assert H_c.shape == (4, 4)
    _close(H_c, H_s, rtol=1e-8, atol=1e-8 * np.max(np.abs(H_s)))

    def filtered(method):
        return lambda t: (
            sdessm.kalman_filter(_from_theta(params, t), y, method=method).filtered_means
        )

    J_c = jax.jit(jax.jacfwd(filtered("compiled")))(theta)
    J_s = jax.jit(jax.jacfwd(filtered("sequential")))(theta)
    assert J_c.shape == (6, 1, 4)
    _close(J_c, J_s, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------- 6. jit and vmap


@needs_kernels
def test_jit_and_vmap_agree_with_sequential(rng):
    arrays, params, y = _gradient_case(rng, "shared")
    ys = np.stack([y, _gaps(rng, rng.normal(size=y.shape)), rng.normal(size=y.shape)])
    ys_j = jnp.asarray(ys)

    filt, smooth, loglik = (
        jax.jit(lambda p, y, fn=fn: fn(p, y, method="compiled"))(params, ys_j)
        for fn in (sdessm.kalman_filter, sdessm.rts_smoother, sdessm.log_likelihood)
    )
    v_filt, v_smooth, v_loglik = (
        jax.vmap(lambda y, fn=fn: fn(params, y, method="compiled"))(ys_j)
        for fn in (sdessm.kalman_filter, sdessm.rts_smoother, sdessm.log_likelihood)
    )
    _close(loglik, sdessm.log_likelihood(params, ys, method="sequential"), rtol=1e-11)
    for b in range(len(ys)):  # the dense Gaussian stands in for the sequential filter/smoother
        for f, sm, ll in ((filt, smooth, loglik), (v_filt, v_smooth, v_loglik)):
            pairs, want = moment_pairs(f, sm, arrays, ys[b], b)
            for a, w in pairs:
                _close(a, w)
            _close(ll[b], want)

    # vmap over the parameters: a batch of mu1 (value, gradient, filtered means), of A (value)
    def loglik(method, **fields):
        return sdessm.log_likelihood(params._replace(**fields), y, method=method)

    mu1s = jnp.asarray(rng.normal(size=(4, 2)))
    got = jax.jit(jax.vmap(lambda m: loglik("compiled", mu1=m)))(mu1s)
    _close(got, [loglik("sequential", mu1=m) for m in mu1s], rtol=1e-11)
    g_got = jax.vmap(jax.grad(lambda m: loglik("compiled", mu1=m)))(mu1s)
    y_j = jnp.asarray(y)
    g_want = [LGSSM_GRAD["sequential"](params._replace(mu1=m), y_j)[0].mu1 for m in mu1s]
    _close(g_got, g_want, rtol=1e-8, atol=1e-10)
    means = jax.vmap(
        lambda m: sdessm.kalman_filter(params._replace(mu1=m), y, method="compiled").filtered_means
    )(mu1s)
    for m, got_means in zip(mu1s, means, strict=True):
        own = (*arrays[:5], np.asarray(m), arrays[6])
        _close(got_means, dense_filter(own, y)[0])
    As = params.A[None] * jnp.linspace(0.8, 1.1, 4)[:, None, None]
    got = jax.vmap(lambda A: loglik("compiled", A=A))(As)
    _close(got, [loglik("sequential", A=A) for A in As], rtol=1e-11)

    # jit of value and gradient with y traced: the path is chosen at run time (`lax.cond`)
    value, (g, gy) = jax.jit(
        jax.value_and_grad(
            lambda p, y: sdessm.log_likelihood(p, y, method="compiled"), argnums=(0, 1)
        )
    )(params, y_j)
    s_g, s_gy = LGSSM_GRAD["sequential"](params, y_j)
    _close(value, loglik("sequential"), rtol=1e-11)
    _compare_grads(g, s_g, LGSSM_FIELDS)
    obs = ~np.isnan(y)
    _close(np.asarray(gy)[obs], np.asarray(s_gy)[obs], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- 7. fallbacks


@needs_kernels
def test_float32_falls_back_to_the_pure_path(rng):
    """The kernels take float64 only. Float32 arrays reach the single-sequence functions as
    they are (x64 stays on: no switch of JAX's configuration): there the compiled method runs
    the pure-JAX recursion, exactly the sequential one, and stays in float32. Through the public
    entry points, which convert to float64, float32 inputs take the kernel and give the dense
    Gaussian of the rounded inputs."""
    from sdessm import kalman

    arrays, _, y = _gradient_case(rng, "shared")
    params = sdessm.LGSSMParams(*(jnp.asarray(a, jnp.float32) for a in arrays))
    y32 = jnp.asarray(y, jnp.float32)
    assert not compiled.applies(params, y32)
    rounded = tuple(np.asarray(a, np.float64) for a in params[:7])
    y_rounded = np.asarray(y32, np.float64)
    fm, fc, _, _ = dense_filter(rounded, y_rounded)
    loglik = dense_smoother(rounded, y_rounded)[3]
    pairs = [
        (kalman.filter_sequence_compiled, kalman.filter_sequence),
        (kalman.loglik_sequence_compiled, kalman.loglik_sequence),
    ]
    for fn, pure in pairs:
        got, want = jax.jit(fn)(params, y32), jax.jit(pure)(params, y32)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert a.dtype == jnp.float32
            _close(a, b, rtol=1e-6, atol=1e-6)
    filt = jax.jit(kalman.filter_sequence_compiled)(params, y32)
    _close(filt.filtered_means, fm, rtol=1e-3, atol=1e-3)
    _close(filt.log_likelihood, loglik, rtol=1e-4)

    got = sdessm.log_likelihood(params, y32, method="compiled")
    assert got.dtype == jnp.float64
    _close(got, loglik)


@needs_kernels
@pytest.mark.parametrize("missing", [False, True])
def test_single_time_step(rng, missing):
    _, _, arrays, y = random_problem(rng, 2, 2, 2)
    one = (arrays[0][0], arrays[1][0], *arrays[2:])
    params = _lgssm(one, as_jax=True)
    y1 = y[:1].copy()
    if missing:
        y1[0, 1] = np.nan
    padded = np.concatenate([y1, np.full((1, 2), np.nan)])  # the dense reference needs T >= 2
    means, covs, _, loglik = dense_smoother(one, padded)
    fm, fc, _, _ = dense_filter(one, padded)
    for method in ("compiled", "auto"):
        _close(sdessm.log_likelihood(params, y1, method=method), loglik)
        filt = sdessm.kalman_filter(params, y1, method=method)
        _close(filt.filtered_means, fm[:1])
        _close(filt.filtered_covs, fc[:1])
        smooth = sdessm.rts_smoother(params, y1, method=method)
        _close(smooth.smoothed_means, means[:1])
        _close(smooth.smoothed_covs, covs[:1])
        assert smooth.cross_covs.shape == (0, 2, 2)


@needs_kernels
def test_known_inputs_match_sequential(rng):
    """Input gains B and D: the inputs are folded into the data before the kernel. For an
    SDEParams on irregular times the filter and log-likelihood equal the sequential path's; for
    an LGSSMParams with per-step B the gradient with respect to B, D and H (which reaches them
    through the folded data, the kernel's gradient with respect to y) equals central
    differences of the compiled log-likelihood, whose values equal the sequential ones."""
    d, p, m, T = 2, 2, 2, 8
    fields, times, v, y = random_driven_problem(rng, T, d, p, m)
    sde = sdessm.SDEParams(**fields)
    y = _gaps(rng, y)
    for fn in (sdessm.kalman_filter, sdessm.log_likelihood):
        got = fn(sde, y, times, inputs=v, method="compiled")
        want = fn(sde, y, times, inputs=v, method="sequential")
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            _close(a, b, rtol=1e-10, atol=1e-12)

    params = sde.discretize(times)
    assert params.B.shape == (T - 1, d, m)
    params = sdessm.LGSSMParams(*(jnp.asarray(a) for a in params))

    def loglik(method, params):
        return sdessm.log_likelihood(params, y, inputs=v, method=method)

    _close(loglik("compiled", params), loglik("sequential", params), rtol=1e-11)
    grad = jax.jit(jax.grad(lambda q: loglik("compiled", q)))(params)
    eps = 1e-6
    for _ in range(3):
        V = {k: rng.normal(size=np.shape(getattr(params, k))) for k in ("B", "D", "H")}
        slope = sum(np.vdot(np.asarray(getattr(grad, k)), V[k]) for k in V)
        moved = [
            params._replace(**{k: getattr(params, k) + s * eps * V[k] for k in V})
            for s in (1.0, -1.0)
        ]
        numeric = (loglik("compiled", moved[0]) - loglik("compiled", moved[1])) / (2 * eps)
        np.testing.assert_allclose(slope, numeric, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- 8. methods and switch


@pytest.mark.parametrize("fn", [sdessm.kalman_filter, sdessm.rts_smoother, sdessm.log_likelihood])
def test_unknown_method_names_the_allowed_ones(rng, fn):
    _, _, arrays, y = random_problem(rng, 4, 1, 1)
    with pytest.raises(ValueError, match="bogus") as info:
        fn(_lgssm(arrays), y, method="bogus")
    for name in ("auto", "compiled", "sequential", "parallel"):
        assert f'"{name}"' in str(info.value)


SWITCHED_OFF = textwrap.dedent(
    """
    import json
    import numpy as np
    import sdessm
    from sdessm import compiled

    params = sdessm.LGSSMParams(
        A=np.array([[0.9]]), Sigma=np.array([[0.2]]), H=np.array([[1.0]]), u=np.zeros(1),
        R=np.array([[0.5]]), mu1=np.zeros(1), P1=np.array([[1.0]]),
    )
    y = np.array([[0.3], [np.nan], [-0.4], [1.2]])
    report = {"available": compiled.available(), "why": compiled.why_unavailable()}
    try:
        sdessm.log_likelihood(params, y, method="compiled")
        report["compiled"] = None
    except ValueError as error:
        report["compiled"] = str(error)
    report["auto"] = float(sdessm.log_likelihood(params, y, method="auto"))
    report["filter_auto"] = float(sdessm.kalman_filter(params, y, method="auto").log_likelihood)
    report["sequential"] = float(sdessm.log_likelihood(params, y, method="sequential"))
    print(json.dumps(report))
    """
)


def test_switched_off_by_the_environment():
    env = dict(os.environ, SDESSM_COMPILED="off")
    run = subprocess.run(
        [sys.executable, "-c", SWITCHED_OFF], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["available"] is False
    assert "SDESSM_COMPILED" in report["why"]
    assert report["compiled"] is not None and "SDESSM_COMPILED" in report["compiled"]
    np.testing.assert_allclose(report["auto"], report["sequential"], rtol=1e-12)
    np.testing.assert_allclose(report["filter_auto"], report["sequential"], rtol=1e-12)
    y = np.array([[0.3], [np.nan], [-0.4], [1.2]])
    arrays = ([[0.9]], [[0.2]], [[1.0]], [0.0], [[0.5]], [0.0], [[1.0]])
    arrays = tuple(np.asarray(a, dtype=float) for a in arrays)
    np.testing.assert_allclose(report["sequential"], dense_smoother(arrays, y)[3], rtol=1e-10)


# ------------------------------------------------------------------------ 9. not positive definite


def _degenerate():
    """R = 0 and P1 = 0 with the first row observed: the first innovation covariance is 0
    (both are valid, positive semi-definite, parameters)."""
    return sdessm.LGSSMParams(
        A=jnp.array([[0.9, 0.1], [0.0, 0.8]]),
        Sigma=0.1 * jnp.eye(2),
        H=jnp.array([[1.0, 0.0]]),
        u=jnp.zeros(1),
        R=jnp.zeros((1, 1)),
        mu1=jnp.zeros(2),
        P1=jnp.zeros((2, 2)),
    )


DEGENERATE_Y = np.array([[0.5], [1.0], [np.nan], [-0.3], [0.2], [0.1]])


@needs_kernels
def test_non_positive_definite_innovation_gives_nan():
    params = _degenerate()
    # the kernel reports NaN (its failed Cholesky factor), no crash; the sequential path gives
    # NaN as well (the Cholesky factor of R = 0 divides by zero), so NaN is no new behaviour
    got = sdessm.log_likelihood(params, DEGENERATE_Y, method="compiled")
    assert not np.isfinite(got)
    for fn in (sdessm.kalman_filter, sdessm.rts_smoother):
        assert not np.isfinite(fn(params, DEGENERATE_Y, method="compiled").log_likelihood)


@needs_kernels
def test_non_positive_definite_innovation_poisons_moments_and_gradient():
    """A failed factor makes every output of that sequence NaN, as on the sequential path (not
    uninitialised memory, and no finite gradient of a NaN log-likelihood)."""
    params = _degenerate()
    y = DEGENERATE_Y
    filt = sdessm.kalman_filter(params, y, method="compiled")
    smooth = sdessm.rts_smoother(params, y, method="compiled")
    grad = jax.grad(_loglik("compiled"))(params, jnp.asarray(y))
    assert np.all(np.isnan(filt.filtered_means[1:]))
    assert np.all(np.isnan(smooth.smoothed_means))
    assert np.all(np.isnan(grad.A))
    for field in filt[:4] + smooth[:3]:
        assert np.all(np.isnan(field))
    assert all(np.all(np.isnan(g)) for g in jax.tree.leaves(grad))
    # a second sequence in the same call, whose first value is missing (so its innovation
    # covariances are positive definite), is untouched by the first one's failure
    good = np.array([[np.nan], [1.0], [np.nan], [-0.3], [0.2], [0.1]])
    both = np.stack([y, good])
    # (the sequential log_likelihood whitens by the Cholesky factor of R = 0 and gives NaN here:
    # its value is the sequential filter's, which factors the innovation covariance instead)
    for fn in (sdessm.kalman_filter, sdessm.rts_smoother):
        pair, alone = fn(params, both, method="compiled"), fn(params, good, method="sequential")
        for a, b in zip(pair, alone, strict=True):
            assert np.all(np.isnan(a[0]))
            np.testing.assert_allclose(a[1], b, rtol=1e-10, atol=1e-12)
    value = sdessm.log_likelihood(params, both, method="compiled")
    assert np.isnan(value[0])
    want = sdessm.kalman_filter(params, good, method="sequential").log_likelihood
    np.testing.assert_allclose(value[1], want, rtol=1e-10)


# ------------------------------------------------------------------------ 10. many sequences


@needs_kernels
def test_many_sequences_with_one_mask_share_one_recursion():
    """From `kalman.ROWS_FROM` sequences with one NaN mask, values come from the sequential
    path's one shared recursion and the gradient from the kernel, sequence by sequence: both
    equal the sequential path's (value, gradient, and the Hessian through the pure path)."""
    from sdessm.kalman import ROWS_FROM

    rng = np.random.default_rng(11)
    _, _, arrays, _ = random_problem(rng, 12, 2, 2)
    params = _lgssm(arrays, as_jax=True)
    y = rng.normal(size=(ROWS_FROM, 12, 2))
    y[:, 3, 0] = np.nan  # one mask shared by all
    y = jnp.asarray(y)

    def total(method):
        return lambda prm, yy: jnp.sum(_loglik(method)(prm, yy))

    np.testing.assert_allclose(total("compiled")(params, y), total("sequential")(params, y))
    for fn in (sdessm.kalman_filter, sdessm.rts_smoother):
        got, want = fn(params, y, method="compiled"), fn(params, y, method="sequential")
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    got = jax.grad(total("compiled"), argnums=(0, 1))(params, y)
    want = jax.grad(total("sequential"), argnums=(0, 1))(params, y)
    for name in ("A", "Sigma", "H", "u", "R", "mu1", "P1"):
        a, b = getattr(got[0], name), getattr(want[0], name)
        if name in ("Sigma", "R", "P1"):
            a, b = (a + jnp.swapaxes(a, -1, -2)) / 2, (b + jnp.swapaxes(b, -1, -2)) / 2
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8 * float(jnp.max(jnp.abs(b))))
    np.testing.assert_allclose(got[1], jnp.nan_to_num(want[1]), atol=1e-9)
    hess = [
        jax.hessian(lambda m, mt=mt: total(mt)(params._replace(mu1=m), y))(params.mu1)
        for mt in ("compiled", "sequential")
    ]
    np.testing.assert_allclose(hess[0], hess[1], rtol=1e-9)
