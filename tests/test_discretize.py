"""Exact discretisation against closed forms, quadrature and the semigroup property."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from reference import quadrature_sigma, random_stable_drift, scalar_ou

import sdessm

RTOL, ATOL = 1e-10, 1e-13


def test_scalar_ou_closed_form():
    theta, sigma = 0.7, 1.3
    dts = np.array([1e-4, 0.01, 0.5, 3.0, 20.0])
    A, Sigma = sdessm.discretize([[-theta]], [[sigma]], dts)
    assert A.shape == Sigma.shape == (5, 1, 1)
    np.testing.assert_allclose(A[:, 0, 0], np.exp(-theta * dts), rtol=RTOL)
    expected = sigma**2 * (1 - np.exp(-2 * theta * dts)) / (2 * theta)
    np.testing.assert_allclose(Sigma[:, 0, 0], expected, rtol=RTOL)


def test_random_walk_is_exact():
    L = np.array([[1.0, 0.0], [0.5, 2.0]])
    A, Sigma = sdessm.discretize(np.zeros((2, 2)), L, np.array([0.1, 7.0]))
    np.testing.assert_allclose(A, np.broadcast_to(np.eye(2), (2, 2, 2)), atol=ATOL)
    np.testing.assert_allclose(Sigma[0], 0.1 * L @ L.T, rtol=RTOL)
    np.testing.assert_allclose(Sigma[1], 7.0 * L @ L.T, rtol=RTOL)


def test_integrated_random_walk_closed_form():
    # x = (position, velocity), velocity a Brownian motion: Sigma = q [[s^3/3, s^2/2], [s^2/2, s]]
    q, s = 2.0, 0.8
    A, Sigma = sdessm.discretize([[0.0, 1.0], [0.0, 0.0]], [[0.0], [np.sqrt(q)]], s)
    np.testing.assert_allclose(A, [[1.0, s], [0.0, 1.0]], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        Sigma, q * np.array([[s**3 / 3, s**2 / 2], [s**2 / 2, s]]), rtol=RTOL
    )


@pytest.mark.parametrize("s", [0.05, 1.0, 9.0])
def test_damped_rotation_closed_form(s):
    # F = -a I + w J, Q = q I: A = e^{-a s} rot(w s), Sigma = q (1 - e^{-2 a s}) / (2 a) I
    a, w, q = 0.3, 2.5, 0.8
    F = np.array([[-a, -w], [w, -a]])
    A, Sigma = sdessm.discretize(F, np.sqrt(q) * np.eye(2), s)
    rot = np.array([[np.cos(w * s), -np.sin(w * s)], [np.sin(w * s), np.cos(w * s)]])
    np.testing.assert_allclose(A, np.exp(-a * s) * rot, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        Sigma, q * (1 - np.exp(-2 * a * s)) / (2 * a) * np.eye(2), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("d", [1, 2, 4])
@pytest.mark.parametrize("s", [0.01, 0.3, 2.5])
def test_against_quadrature(rng, d, s):
    F = random_stable_drift(rng, d)
    L = rng.normal(size=(d, d))
    A, Sigma = sdessm.discretize(F, L, s)
    np.testing.assert_allclose(A, scipy.linalg.expm(F * s), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(Sigma, quadrature_sigma(F, L @ L.T, s), rtol=1e-9, atol=1e-13)


def test_damped_oscillator_against_quadrature():
    omega, zeta, sigma = 2.0, 0.1, 0.5
    F = np.array([[0.0, 1.0], [-(omega**2), -2 * zeta * omega]])
    L = np.array([[0.0], [sigma]])
    for s in (0.05, 0.4, 3.0):
        A, Sigma = sdessm.discretize(F, L, s)
        np.testing.assert_allclose(A, scipy.linalg.expm(F * s), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(Sigma, quadrature_sigma(F, L @ L.T, s), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("stiffness", [5.0, 20.0, 50.0])
def test_stiff_steps_against_eigen_closed_form(rng, stiffness):
    # F = V diag(lam) V^{-1}: in the eigenbasis Sigma_ij = Qt_ij (e^{(l_i+l_j)s} - 1) / (l_i+l_j)
    s = 1.0
    lam = np.array([-stiffness, -0.1, -1.0])
    V = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    Vinv = np.linalg.inv(V)
    F = V @ np.diag(lam) @ Vinv
    L = rng.normal(size=(3, 3))
    Qt = Vinv @ L @ L.T @ Vinv.T
    lsum = lam[:, None] + lam[None, :]
    Sigma_expected = V @ (Qt * np.expm1(lsum * s) / lsum) @ V.T
    A_expected = V @ np.diag(np.exp(lam * s)) @ Vinv
    A, Sigma = sdessm.discretize(F, L, s)
    scale_A = np.abs(A_expected).max()
    np.testing.assert_allclose(A, A_expected, rtol=1e-9, atol=1e-12 * scale_A)
    np.testing.assert_allclose(
        Sigma, Sigma_expected, rtol=1e-9, atol=1e-12 * np.abs(Sigma_expected).max()
    )
    assert np.linalg.eigvalsh(np.asarray(Sigma)).min() > 0


def test_stiff_scalar_keeps_relative_accuracy():
    # exp(-50) ~ 2e-22: a plain 2x2 Van Loan exponential loses it entirely
    A, Sigma = sdessm.discretize([[-50.0]], [[1.0]], 1.0)
    np.testing.assert_allclose(A[0, 0], np.exp(-50.0), rtol=1e-12)
    np.testing.assert_allclose(Sigma[0, 0], -np.expm1(-100.0) / 100.0, rtol=1e-12)


def test_semigroup_composition(rng):
    F = random_stable_drift(rng, 3)
    L = rng.normal(size=(3, 2))
    s1, s2 = 0.37, 1.21
    A, Sigma = sdessm.discretize(F, L, np.array([s1, s2, s1 + s2]))
    np.testing.assert_allclose(A[2], A[1] @ A[0], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(
        Sigma[2], A[1] @ Sigma[0] @ A[1].T + Sigma[1], rtol=1e-10, atol=1e-13
    )


def test_vectorised_shapes_and_jit_agree():
    F, L = -np.eye(2), np.eye(2)
    dts = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    A, Sigma = sdessm.discretize(F, L, dts)
    assert A.shape == Sigma.shape == (2, 3, 2, 2)
    A_jit, Sigma_jit = jax.jit(sdessm.discretize)(F, L, dts)
    np.testing.assert_allclose(A_jit, A, rtol=1e-12)
    np.testing.assert_allclose(Sigma_jit, Sigma, rtol=1e-12)
    A, Sigma = sdessm.discretize(F, L, np.zeros((0,)))  # no steps at all
    assert A.shape == Sigma.shape == (0, 2, 2)


@pytest.mark.parametrize("largest", [0.3, 5.0, 1e4], ids=["series", "few_doublings", "many"])
def test_batch_equals_each_step_alone(rng, largest):
    """A batch runs one doubling loop as long as its largest step needs (none, a few, many), and
    scales its shared series by its longest reduced step: neither may change any step's result."""
    F = random_stable_drift(rng, 3)
    L = rng.normal(size=(3, 2))
    steps = np.array([1e-3, 0.05, 0.2, largest, 0.01])
    A, Sigma = sdessm.discretize(F, L, steps)
    for i, s in enumerate(steps):
        A1, Sigma1 = sdessm.discretize(F, L, s)
        # round-off only: the batch scales its series by its own longest step
        np.testing.assert_allclose(A[i], A1, rtol=1e-12, atol=1e-13 * np.abs(A1).max())
        np.testing.assert_allclose(Sigma[i], Sigma1, rtol=1e-12, atol=1e-13 * np.abs(Sigma1).max())
        expected = scipy.linalg.expm(F * s)
        np.testing.assert_allclose(A1, expected, rtol=1e-11, atol=1e-14 * np.abs(expected).max())


def test_gradient_matches_finite_differences(rng):
    F0 = random_stable_drift(rng, 2)
    L = rng.normal(size=(2, 2))

    def f(F, s):
        A, Sigma = sdessm.discretize(F, L, s)
        return jnp.sum(A * 1.3) + jnp.sum(Sigma**2)

    gF, gs = jax.grad(f, argnums=(0, 1))(jnp.asarray(F0), 0.7)
    eps = 1e-6
    num = np.zeros_like(F0)
    for i in range(2):
        for j in range(2):
            E = np.zeros_like(F0)
            E[i, j] = eps
            num[i, j] = (f(F0 + E, 0.7) - f(F0 - E, 0.7)) / (2 * eps)
    np.testing.assert_allclose(gF, num, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gs, (f(F0, 0.7 + eps) - f(F0, 0.7 - eps)) / (2 * eps), rtol=1e-6)


def _ou():
    return scalar_ou(1.0)


def test_discretize_params_groups_equal_steps():
    times = np.array([0.0, 0.1, 0.2, 0.5, 0.6, 1.6])
    lg = _ou().discretize(times)
    assert lg.A.shape == (5, 1, 1)
    np.testing.assert_allclose(lg.A[:, 0, 0], np.exp(-np.diff(times)), rtol=1e-12)
    uniform = _ou().discretize(np.arange(10) * 0.1)  # float steps that differ by round-off
    assert uniform.A.shape == (1, 1)
    np.testing.assert_allclose(uniform.A[0, 0], np.exp(-0.1), rtol=1e-12)
    np.testing.assert_allclose(_ou().discretize(dt=0.1).Sigma, uniform.Sigma, rtol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sdessm.discretize(np.ones((2, 3)), np.eye(2), 0.1), "`F` must be a square"),
        (lambda: sdessm.discretize(np.eye(2), np.eye(3), 0.1), "`L` must have shape (2, m)"),
        (lambda: sdessm.discretize(-np.eye(2), np.eye(2), 0.0), "`dt` must be > 0"),
        (lambda: sdessm.discretize(-np.eye(2), np.eye(2), [0.1, -1.0]), "`dt` must be > 0"),
        (lambda: sdessm.discretize([[np.inf]], [[1.0]], 0.1), "`F` must be finite"),
        (lambda: sdessm.discretize([[-1.0]], [[np.nan]], 0.1), "`L` must be finite"),
        (lambda: _ou().discretize(np.array([0.0, 1.0, 1.0])), "strictly increasing"),
        (lambda: _ou().discretize(np.array([0.0, 2.0, 1.0])), "step 1 -> 2 has length -1"),
        (lambda: _ou().discretize(), "exactly one of `times`"),
        (lambda: _ou().discretize(dt=-0.5), "`dt` must be > 0"),
        (lambda: _ou().discretize(np.array([0.0, np.inf])), "`times` must be finite"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


@pytest.mark.parametrize("q_scale", [1e-8, 1.0, 1e6])
def test_non_normal_drift_and_any_diffusion_scale(q_scale):
    # ||F||_1 != ||F||_inf and Q of any size: the reduced-step Taylor block stays exact
    F = np.array([[-1.0, 40.0, 0.0], [0.0, -2.0, 0.0], [3.0, 0.0, -0.5]])
    L = np.sqrt(q_scale) * np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.2, 0.3]])
    for s in (0.01, 0.7):
        A, Sigma = sdessm.discretize(F, L, s)
        np.testing.assert_allclose(A, scipy.linalg.expm(F * s), rtol=1e-10, atol=1e-12)
        ref = quadrature_sigma(F, L @ L.T, s)
        np.testing.assert_allclose(Sigma, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
