"""The subspace (canonical-correlation) start: consistent, usable by EM, clear about bad input."""

import jax
import numpy as np
import pytest
from reference import with_missing
from sdessm.models import load

import sdessm
from sdessm.realisation import _ar_order, _with_real_logarithm, subspace_lgssm, subspace_start


def _simulate(module, T, dt, seed, **changes):
    values = {k: np.asarray(v, dtype=float) for k, v in module.TRUE_PARAMS.items()} | changes
    truth = module.to_sde(**values)
    times = np.arange(T) * dt
    _, y = sdessm.simulate(jax.random.key(seed), truth, times)
    return truth, times, np.array(y)


def _eigenvalues(F):
    return np.sort_complex(np.linalg.eigvals(np.asarray(F)))


@pytest.mark.parametrize("T", [2000, 50000])
def test_the_oscillator_seen_through_its_position(T):
    """d = 2 from one observed coordinate: the eigenvalues of F (and so the period and damping)
    come out of the second moments alone, closer with more data (consistency)."""
    truth, times, y = _simulate(load("damped_oscillator"), T, 0.1, 1)
    start = subspace_start(y, times, state_dim=2)
    error = np.abs(_eigenvalues(start.F) - _eigenvalues(truth.F)).max()
    assert error < (0.1 if T == 2000 else 0.03), (_eigenvalues(start.F), _eigenvalues(truth.F))
    assert start.u[0] == pytest.approx(0.0, abs=0.05)
    # the observation's stationary variance is matched: H P_inf H^T + innovation part of R
    variance = float(np.var(y))
    assert float(start.R[0, 0]) < variance and float((start.H @ start.H.T)[0, 0]) < variance


def test_two_observed_coordinates_with_missing_values_and_sequences():
    mou = load("multivariate_ou")
    values = {k: np.asarray(v, dtype=float) for k, v in mou.TRUE_PARAMS.items()}
    truth = mou.to_sde(**values)
    times = np.arange(4000) * 0.1
    _, y = sdessm.simulate(jax.random.key(2), truth, times, num_sequences=3)
    y = with_missing(np.random.default_rng(0), y, 0.2)
    start = subspace_start(y + np.array([5.0, -3.0]), times, state_dim=2)
    np.testing.assert_allclose(_eigenvalues(start.F), _eigenvalues(truth.F), atol=0.06)
    np.testing.assert_allclose(start.u, [5.0, -3.0], atol=0.1)
    assert np.all(np.linalg.eigvals(start.F).real < 0)


def test_em_from_the_subspace_start_reaches_the_maximum_from_the_truth():
    """A scalar OU plus noise with H held at the start's value (the scale of the state is then
    fixed) and the first state's law held at the truth's in that scale: EM from the subspace
    start and from the truth certify the same maximum."""
    truth, times, y = _simulate(load("ou"), 800, 0.25, 3)
    y = y + 100.0
    start = subspace_start(y, times, state_dim=1)
    h = float(start.H[0, 0])  # x_start = x_truth / h
    start = start._replace(mu1=np.asarray(truth.mu1) / h, P1=np.asarray(truth.P1) / h**2)
    kw = dict(fixed=("H", "mu1", "P1"), progress=False)
    fit = sdessm.fit_em(start, y, times, **kw)
    ref = sdessm.fit_em(truth._replace(u=truth.u + 100.0), y, times, **kw)
    assert fit.converged and ref.converged
    assert fit.log_likelihood == pytest.approx(ref.log_likelihood, abs=1e-6)
    assert float(fit.params.F[0, 0]) == pytest.approx(float(ref.params.F[0, 0]), rel=1e-4)


def test_the_unconstrained_zoo_model_starts_from_the_subspace_estimate():
    unc = load("unconstrained")
    truth, times, y = _simulate(load("damped_oscillator"), 2000, 0.1, 5)
    named = unc.start_from_data(times, y)
    start = unc.to_sde(**named)
    np.testing.assert_allclose(_eigenvalues(start.F), _eigenvalues(truth.F), atol=0.1)
    ll_start = float(sdessm.log_likelihood(start, y, times))
    ll_truth = float(sdessm.log_likelihood(truth, y, times))
    # 0.05 per observation below the truth (R holds the innovations, an over-estimate); the
    # prior medians, the start without it, are 1475 below
    assert ll_start > ll_truth - 150


def test_the_horizon_is_the_aic_order_of_an_autoregression():
    """An AR(3) series: AIC picks 3, or a little more, among orders up to 12."""
    rng = np.random.default_rng(4)
    x = np.zeros(20000)
    for t in range(3, len(x)):
        x[t] = 0.5 * x[t - 1] - 0.3 * x[t - 2] + 0.2 * x[t - 3] + rng.normal()
    assert 3 <= _ar_order(x[None, :, None], 12) <= 5  # AIC does not under-fit; it may over-fit
    white = rng.normal(size=(1, 5000, 1))
    assert _ar_order(white, 12) <= 3


def test_a_transition_without_a_real_logarithm_is_moved_and_said():
    A = np.array([[-0.5, 0.0], [0.0, 1.2]])
    moved, changed = _with_real_logarithm(A)
    assert changed
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(moved).real), [0.5, 0.999])
    same, changed = _with_real_logarithm(np.array([[0.9, 0.1], [-0.1, 0.9]]))
    assert not changed


def test_bad_input_is_named():
    times = np.arange(100.0)
    y = np.random.default_rng(0).normal(size=(100, 1))
    with pytest.raises(ValueError, match="`state_dim` must be >= 1"):
        subspace_start(y, times, state_dim=0)
    with pytest.raises(ValueError, match="exactly one of `times` and `dt`"):
        subspace_start(y, times, state_dim=1, dt=1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        subspace_start(y, times[::-1], state_dim=1)
    with pytest.raises(ValueError, match="cannot hold 3 states"):
        subspace_lgssm(y, state_dim=3, horizon=2)
    with pytest.raises(ValueError, match="too short"):
        subspace_lgssm(y[:6], state_dim=1, horizon=2)
    y2 = np.concatenate([y, np.full((100, 1), np.nan)], axis=1)
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] of `y` have no observed value"):
        subspace_lgssm(y2, state_dim=1)
