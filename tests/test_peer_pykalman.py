"""Agreement with a peer library (pykalman) on the same discrete model."""

import numpy as np
import pytest
from reference import random_problem, with_missing

import sdessm

pykalman = pytest.importorskip("pykalman")
from pykalman import standard  # noqa: E402

RTOL, ATOL = 1e-8, 1e-10


@pytest.mark.parametrize("irregular", [False, True])
@pytest.mark.parametrize("missing_rows", [False, True])
def test_filter_and_smoother_agree_with_pykalman(rng, irregular, missing_rows):
    T, d, p = 40, 3, 2
    _, _, (A, Sigma, H, u, R, mu1, P1), y = random_problem(rng, T, d, p, irregular=irregular)
    if missing_rows:  # pykalman skips a time step when any of its entries is masked
        y = with_missing(rng, y, 0.25, rows=True)
    kf = pykalman.KalmanFilter(
        transition_matrices=A,
        observation_matrices=H,
        transition_covariance=Sigma,
        observation_covariance=R,
        transition_offsets=np.zeros(d),
        observation_offsets=u,
        initial_state_mean=mu1,
        initial_state_covariance=P1,
    )
    masked = np.ma.masked_invalid(y)
    f_means, f_covs = kf.filter(masked)
    s_means, s_covs = kf.smooth(masked)
    # cross-covariances the way pykalman's own EM forms them
    pred_means, pred_covs, _, filt_means, filt_covs = standard._filter(
        A, H, Sigma, R, np.zeros(d), u, mu1, P1, masked
    )
    _, _, gains = standard._smooth(A, filt_means, filt_covs, pred_means, pred_covs)
    pairs = standard._smooth_pair(s_covs, gains)[1:]

    params = sdessm.LGSSMParams(A, Sigma, H, u, R, mu1, P1)
    filt = sdessm.kalman_filter(params, y)
    smooth = sdessm.rts_smoother(params, y)
    np.testing.assert_allclose(filt.filtered_means, f_means, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(filt.filtered_covs, f_covs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(smooth.smoothed_means, s_means, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(smooth.smoothed_covs, s_covs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(smooth.cross_covs, pairs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(smooth.log_likelihood, kf.loglikelihood(masked), rtol=RTOL)
