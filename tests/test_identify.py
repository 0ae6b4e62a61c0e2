"""Identifiability of a start, judged before EM (`sdessm.identify`).

The premise of every flagged case is checked independently: moving the parameters along the
symmetry the check names leaves the exact log-likelihood of data unchanged (the Kalman filter of
`sdessm.log_likelihood`), and the dense law of the stretch equals the reference joint Gaussian.
"""

import numpy as np
import pytest
import scipy.linalg
from reference import (
    dense_joint,
    linear_sde,
    oscillator,
    quadrature_sigma,
    random_spd,
    random_stable_drift,
    scalar_ou,
)

import sdessm
from sdessm.identify import _fields, _law, check_identified, unidentified

STEPS = np.full(50, 0.2)


def _loglik(params, y, times):
    return float(sdessm.log_likelihood(params, y, times))


def test_the_law_of_the_stretch_is_the_reference_joint_gaussian(rng):
    d, p = 3, 2
    F, Q = random_stable_drift(rng, d), random_spd(rng, d)
    fields = {"F": F, "Q": Q, "H": rng.normal(size=(p, d)), "u": rng.normal(size=p)}
    fields |= {"R": random_spd(rng, p), "mu1": rng.normal(size=d), "P1": random_spd(rng, d)}
    steps = rng.uniform(0.1, 0.7, size=5)
    A = np.stack([scipy.linalg.expm(F * h) for h in steps])
    Sigma = np.stack([quadrature_sigma(F, Q, h) for h in steps])
    ref = dense_joint(
        A, Sigma, fields["H"], fields["u"], fields["R"], fields["mu1"], fields["P1"], 6
    )
    mean, cov = _law(fields, steps)
    np.testing.assert_allclose(mean, ref[2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, ref[3], rtol=1e-9, atol=1e-11)


def test_a_scale_of_the_state_is_not_identified_by_a_held_p1(rng, key):
    """OU with H free: (H / c, Q c^2, mu1 c, P1 c^2) is one law; holding P1 pins c only through
    x_1. The check names H, Q, P1 and asks to hold H; with H held the model is identified."""
    ou = scalar_ou(0.7, 0.8, R=0.2, mu1=0.3)
    times = np.arange(40) * 0.2
    _, y = sdessm.simulate(key, ou, times)
    c = 1.7
    scaled = ou._replace(H=ou.H / c, L=ou.L * c, mu1=ou.mu1 * c, P1=ou.P1 * c**2)
    assert _loglik(scaled, y, times) == pytest.approx(_loglik(ou, y, times), abs=1e-9)
    direction, extra, left = unidentified(ou, {"P1"}, "full", STEPS)
    assert {"H", "Q", "P1"} <= {part.split("[")[0] for part in direction.split(", ")}
    assert (extra, left) == (("H",), 0)
    assert unidentified(ou, {"P1", "H"}, "full", STEPS) is None


def test_a_rotation_of_a_fully_observed_state_asks_to_hold_h(rng):
    F, Q = random_stable_drift(rng, 2), random_spd(rng, 2)
    sde = linear_sde(F, np.linalg.cholesky(Q), R=0.2, mu1=0.3)
    problem = unidentified(sde, {"P1"}, "full", STEPS)
    assert problem is not None and problem[1:] == (("H",), 0)
    for R_structure in ("full", "diagonal", "isotropic"):
        assert unidentified(sde, {"P1", "H"}, R_structure, STEPS) is None
    discrete = sdessm.discretize_params(sde, dt=0.2)
    assert unidentified(discrete, {"P1"}, "full", STEPS)[1:] == (("H",), 0)
    assert unidentified(discrete, {"P1", "H"}, "full", STEPS) is None


def test_a_random_walk_level_and_offset_are_one_direction(key):
    walk = scalar_ou(0.0, 0.5, R=0.2, mu1=0.3)
    times = np.arange(30) * 0.5
    _, y = sdessm.simulate(key, walk, times)
    shifted = walk._replace(mu1=walk.mu1 + 2.0, u=walk.u - 2.0)
    assert _loglik(shifted, y, times) == pytest.approx(_loglik(walk, y, times), abs=1e-9)
    direction, extra, left = unidentified(walk, {"P1", "F", "H"}, "full", STEPS)
    assert direction.startswith(("mu1[0]", "u[0]")) and (extra, left) == (("u",), 0)
    assert unidentified(walk, {"P1", "H"}, "full", STEPS) is None  # a free drift pins the level


def test_a_general_drift_seen_through_one_coordinate_needs_structure(key):
    """H = [1, 0] and L = [0, 1]^T held: T = [[1, 0], [a, 1]] keeps both and changes F, so no
    held emission or noise field helps; the message asks for structure."""
    osc = oscillator(2.0, 0.125, 1.0, R=0.2, mu1=0.3)  # F = [[0, 1], [-4, -0.5]]
    times = np.arange(60) * 0.1
    _, y = sdessm.simulate(key, osc, times)
    T = np.array([[1.0, 0.0], [0.6, 1.0]])
    moved = osc._replace(
        F=T @ osc.F @ np.linalg.inv(T), mu1=T @ osc.mu1, P1=T @ osc.P1 @ T.T
    )  # L and H unchanged: T L = L and H T^-1 = H
    assert _loglik(moved, y, times) == pytest.approx(_loglik(osc, y, times), abs=1e-9)
    direction, extra, left = unidentified(osc, {"P1", "H", "L"}, "full", STEPS)
    assert "F[" in direction and (extra, left) == ((), 1)
    with pytest.raises(ValueError, match="not identified.*give the model structure"):
        check_identified(osc, {"P1", "H", "L"}, "full", STEPS)


def test_fit_em_with_the_default_fixed_refuses_before_iterating(rng, key):
    sde = linear_sde(random_stable_drift(rng, 2), R=0.2, mu1=0.3)
    times = np.arange(50) * 0.2
    _, y = sdessm.simulate(key, sde, times)
    with pytest.raises(ValueError, match=r"fixed=\('P1',\) \(the default\).*fixed=\('P1', 'H'\)"):
        sdessm.fit_em(sde, y, times, progress=False)
    fit = sdessm.fit_em(sde, y, times, fixed=("P1", "H"), progress=False)
    assert fit.converged
    explicit = sdessm.fit_em(sde, y, times, fixed=("P1",), num_iters=2, progress=False)
    assert not explicit.converged  # the user's choice is run, and reported


def test_fields_read_q_from_l():
    sde = linear_sde([[-1.0, 0.0], [0.0, -2.0]], [[1.0], [2.0]], [[1.0, 0.0]], R=0.2, mu1=0.3)
    np.testing.assert_array_equal(_fields(sde)["Q"], [[1.0, 2.0], [2.0, 4.0]])
    assert list(_fields(sde)) == ["F", "Q", "H", "u", "R", "mu1", "P1"]
