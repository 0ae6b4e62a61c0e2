"""Exact simulation: sample moments against the analytic moments (SciPy expm + quadrature)."""

import re

import jax
import numpy as np
import pytest
import scipy.linalg
from reference import oscillator, quadrature_sigma

import sdessm

N = 40_000  # draws; checks allow 6 standard errors


def _oscillator():
    return oscillator(
        2.0, 0.15, 0.8, H=[[1.0, 0.0], [0.5, 1.0]], u=[0.3, -1.0], R=[[0.2, 0.05], [0.05, 0.1]],
        mu1=[1.0, -0.5], P1=[[0.3, 0.1], [0.1, 0.2]],
    )  # fmt: skip


def _assert_moments(samples, mean, cov):
    n = samples.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 6 * se_mean)
    centred = samples - samples.mean(0)
    emp = centred.T @ centred / (n - 1)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(emp - cov), 6 * se_cov)


def test_sample_moments_match_analytic(key):
    params = _oscillator()
    times = np.array([0.5, 0.8, 1.5, 3.0, 7.0])
    x, y = sdessm.simulate(key, params, times, num_sequences=N)
    assert x.shape == (N, 5, 2) and y.shape == (N, 5, 2)
    x, y = np.asarray(x), np.asarray(y)
    F, Q = np.asarray(params.F), np.asarray(params.Q)
    for k, t in enumerate(times):
        s = t - times[0]
        A = scipy.linalg.expm(F * s)
        mean = A @ params.mu1
        cov = A @ params.P1 @ A.T + (quadrature_sigma(F, Q, s) if s > 0 else 0.0)
        _assert_moments(x[:, k], mean, cov)
        _assert_moments(y[:, k], params.H @ mean + params.u, params.H @ cov @ params.H.T + params.R)
        # the memory of the initial state: Cov[x_k, x_1] = A(t_k - t_1) P1
        cross = (x[:, k] - x[:, k].mean(0)).T @ (x[:, 0] - x[:, 0].mean(0)) / (N - 1)
        expected = A @ params.P1
        se = np.sqrt((np.outer(np.diag(cov), np.diag(params.P1)) + expected**2) / N)
        np.testing.assert_array_less(np.abs(cross - expected), 6 * se)


def test_same_key_same_draw_and_dt_form(key):
    params = _oscillator()
    times = np.arange(6) * 0.25
    x1, y1 = sdessm.simulate(key, params, times)
    x2, y2 = sdessm.simulate(key, params, dt=0.25, num_timesteps=6)
    np.testing.assert_allclose(x1, x2, rtol=1e-12)
    np.testing.assert_allclose(y1, y2, rtol=1e-12)
    x3, _ = sdessm.simulate(jax.random.key(1), params, times)
    assert not np.allclose(x1, x3)


def test_lgssm_with_per_step_fields(key):
    lg = _oscillator().discretize(np.array([0.0, 0.1, 0.5, 0.6]))
    lg = lg._replace(
        u=np.stack([np.zeros(2), np.ones(2), 2 * np.ones(2), 3 * np.ones(2)]), R=np.zeros((2, 2))
    )  # noiseless emissions: y = H x + u_k exactly
    x, y = sdessm.simulate(key, lg)
    assert x.shape == (4, 2)
    np.testing.assert_allclose(y, x @ lg.H.T + lg.u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda k: sdessm.simulate(k, _oscillator()), "needs `times`"),
        (lambda k: sdessm.simulate(k, _oscillator(), np.array([1.0, 0.5])), "strictly increasing"),
        (lambda k: sdessm.simulate(k, _oscillator().discretize(dt=0.1)), "needs `num_timesteps`"),
        (lambda k: sdessm.simulate(k, _oscillator(), dt=0.1, num_timesteps=0), "must be >= 1"),
        (lambda k: sdessm.simulate(k, _oscillator(), np.arange(3.0), 0), "`num_sequences` must be"),
        (
            lambda k: sdessm.simulate(k, _oscillator()._replace(R=np.eye(3)), np.arange(3.0)),
            "`R` must have shape (..., 2, 2) (p = 2 from `H`); got (3, 3)",
        ),
    ],
)
def test_bad_input(key, call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call(key)


def test_jit_agrees(key):
    params, times = _oscillator(), np.array([0.0, 0.2, 0.9, 1.0])
    x1, y1 = sdessm.simulate(key, params, times)
    x2, y2 = jax.jit(sdessm.simulate)(key, params, times)
    np.testing.assert_allclose(x2, x1, rtol=1e-12)
    np.testing.assert_allclose(y2, y1, rtol=1e-12)
