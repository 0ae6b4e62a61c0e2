"""The parallel (associative-scan) filter and smoother against the sequential ones and a dense
Gaussian: every field of `FilterResult` and `SmootherResult`, the log-likelihood and its gradient.

Compiling the associative scans takes seconds, so cases share compiled programs: each comparison
runs the sequential and parallel filters and smoothers in one jitted function over a batch of
sequences, and the public-API tests reuse the shapes of one another.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import dense_filter, dense_smoother, random_problem, sde_params

import sdessm
from sdessm.kalman import filter_sequence, smoother_sequence
from sdessm.parallel import filter_sequence_parallel, smoother_sequence_parallel

RTOL, ATOL = 1e-8, 1e-10


def _lgssm(arrays):
    return sdessm.LGSSMParams(*(np.asarray(a) for a in arrays))


def _problem(rng, T, d, p, *, irregular=False, **kwargs):
    """`reference.random_problem` on uniform steps (one quadrature); for irregular steps the
    per-step A, Sigma come from `sdessm.discretize` (parallel and sequential see the same ones)."""
    sde, times, arrays, y = random_problem(rng, T, d, p, **kwargs)
    if irregular:
        steps = rng.uniform(0.05, 0.6, size=T - 1)
        times = 0.3 + np.concatenate([[0.0], np.cumsum(steps)])
        arrays = (*sdessm.discretize(sde["F"], sde["L"], steps), *arrays[2:])
    return sde, times, arrays, y


def _assert_same(got, want):
    assert type(got) is type(want)
    for name, g, w in zip(want._fields, got, want, strict=True):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=name)


@functools.partial(jax.jit, static_argnames="complete")
def _all_four(params, ys, complete=False):
    """Sequential and parallel filter and smoother of each sequence in `ys` (B, T, p)."""
    fns = (filter_sequence, smoother_sequence, filter_sequence_parallel, smoother_sequence_parallel)
    return tuple(jax.vmap(lambda y, f=f: f(params, y, complete))(ys) for f in fns)


def _sequences(rng, y, B, missing):
    """B sequences like `y` (the first is `y`); with `missing`, forced fully missing rows (the
    first, inner ones, the last; one sequence missing its first five) and a partly missing one."""
    ys = np.stack([y] + [rng.normal(size=y.shape) * 2.0 for _ in range(B - 1)])
    if missing:
        ys[0, 3] = np.nan
        ys[1, 0] = ys[1, -1] = np.nan
        ys[2, :5] = np.nan
        ys[2, 7, 0] = np.nan  # partly missing when p > 1
    return ys


def _check(params, ys, complete=False):
    filt, smooth, filt_par, smooth_par = _all_four(params, ys, complete=complete)
    _assert_same(filt_par, filt)
    _assert_same(smooth_par, smooth)
    B, T, _ = ys.shape
    d = params.mu1.shape[0]
    assert smooth_par.cross_covs.shape == (B, T - 1, d, d)
    assert smooth_par.log_likelihood.shape == (B,)


@pytest.mark.parametrize(
    "T, d, p, case",
    [
        (37, 2, 2, dict(irregular=True, missing=0.2)),
        (13, 3, 1, dict(irregular=True, missing=0.2, per_step_emissions=True)),
        (13, 1, 1, dict()),
    ],
)
def test_parallel_equals_sequential(rng, T, d, p, case):
    """Random stable systems, T not a power of two, several sequences; irregular steps with partly
    and fully missing rows, (3, 1) with per-step H, u, R too; (1, 1) complete data (the unmasked
    update) with A, Sigma shared by all steps (no step axis). Each case compiles once."""
    _, _, arrays, y = _problem(rng, T, d, p, **case)
    missing = "missing" in case
    if not missing:
        arrays = (arrays[0][0], arrays[1][0], *arrays[2:])
    _check(_lgssm(arrays), _sequences(rng, y, 4, missing), complete=not missing)


@pytest.mark.parametrize("T", [1, 2])
def test_one_and_two_steps(rng, T):
    _, _, (A, Sigma, *rest), y = random_problem(rng, 2, 2, 2)
    ys = _sequences(rng, y[:T], 3, missing=False)
    ys[1, 0, 1] = ys[2, -1] = np.nan
    _check(_lgssm((A[0], Sigma[0], *rest)), ys)


def test_matches_dense_gaussian(rng):
    _, _, arrays, y = _problem(rng, 9, 2, 2, irregular=True, missing=0.3)
    y[4] = np.nan
    smooth = sdessm.rts_smoother(_lgssm(arrays), y, method="parallel")
    filt = sdessm.kalman_filter(_lgssm(arrays), y, method="parallel")
    means, covs, cross, loglik = dense_smoother(arrays, y)
    fm, fc, pm, pc = dense_filter(arrays, y)
    pairs = [
        (smooth.smoothed_means, means),
        (smooth.smoothed_covs, covs),
        (smooth.cross_covs, cross),
        (filt.filtered_means, fm),
        (filt.filtered_covs, fc),
        (filt.predicted_means, pm),
        (filt.predicted_covs, pc),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(smooth.log_likelihood, loglik, rtol=RTOL)
    np.testing.assert_allclose(filt.log_likelihood, loglik, rtol=RTOL)


def test_public_api_with_times(rng):
    """`method="parallel"` through `times` (irregular, discretised by sdessm) and per-sequence
    time grids `(B, T)`."""
    sde, times, _, y = _problem(rng, 9, 2, 2, irregular=True, missing=0.2)
    params = sde_params(sde)
    for fn in (sdessm.kalman_filter, sdessm.rts_smoother):
        _assert_same(fn(params, y, times, method="parallel"), fn(params, y, times))
    ys = _sequences(rng, y, 3, missing=True)
    grids = np.stack([times, times * 1.5, times + np.linspace(0.0, 0.5, 9)])
    got = sdessm.rts_smoother(params, ys, grids, method="parallel")
    _assert_same(got, sdessm.rts_smoother(params, ys, grids))


def test_log_likelihood_jit_and_grad(rng):
    """The parallel log-likelihood and its gradient (through `jit`) equal the sequential ones."""
    sde, times, _, y = _problem(rng, 5, 2, 1, irregular=True)
    y[2] = np.nan
    sde = {k: jnp.asarray(v) for k, v in sde.items()}

    def loglik(F, method):
        return sdessm.log_likelihood(sde_params(sde | dict(F=F)), y, times, method=method)

    value_and_grad = jax.jit(jax.value_and_grad(loglik), static_argnames="method")
    (v_seq, g_seq), (v_par, g_par) = (
        value_and_grad(sde["F"], m) for m in ("sequential", "parallel")
    )
    np.testing.assert_allclose(v_par, v_seq, rtol=RTOL)
    assert np.all(np.isfinite(g_seq)) and np.max(np.abs(g_seq)) > 1e-2
    np.testing.assert_allclose(g_par, g_seq, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("fn", [sdessm.kalman_filter, sdessm.rts_smoother, sdessm.log_likelihood])
def test_unknown_method_is_refused(fn):
    one, zero = jnp.eye(1), jnp.zeros(1)
    params = sdessm.LGSSMParams(A=one, Sigma=one, H=one, u=zero, R=one, mu1=zero, P1=one)
    with pytest.raises(ValueError, match="`method`"):
        fn(params, jnp.zeros((3, 1)), method="associative")
