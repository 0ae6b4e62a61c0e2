"""EM: monotone log-likelihood on every path, stationary M-steps, peer agreement, SDE recovery."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from reference import (
    linear_sde,
    random_sde,
    random_spd,
    random_stable_drift,
    scalar_ou,
    with_missing,
)

import sdessm
from sdessm.discretize import diffusion_from_sigma
from sdessm.em import _recover
from sdessm.em_problem import step_groups
from sdessm.mstep import closed_form_mstep, expected_complete_loglik
from sdessm.params import LGSSMParams, continuous_discrete
from sdessm.problem import resolve
from sdessm.results import EMResult
from sdessm.stats import expected_stats


def _perturbed(rng, params, scale=0.3):
    """A starting point away from the truth (F stays stable, covariances stay SPD)."""
    d, p = params.state_dim, params.obs_dim
    return params._replace(
        F=np.asarray(params.F) - 0.3 * np.eye(d) + scale * rng.normal(size=(d, d)) * 0.3,
        L=np.asarray(params.L) * 1.5,
        H=np.asarray(params.H) + scale * rng.normal(size=np.shape(params.H)),
        R=np.asarray(params.R) * 2.0 + 0.1 * np.eye(p),
        mu1=np.zeros(d),
    )


def _assert_monotone(lls):
    lls = np.asarray(lls)
    assert len(lls) >= 2
    assert np.all(np.diff(lls) >= -1e-9 * np.abs(lls[1:])), np.diff(lls).min()
    assert lls[-1] > lls[0]


def _total_loglik(params, y, times=None, dt=None):
    return float(jnp.sum(sdessm.kalman_filter(params, y, times, dt=dt).log_likelihood))


PATHS = {
    "uniform": dict(B=1, fit=dict()),
    "missing": dict(B=1, missing=0.3, fit=dict()),
    "several_sequences": dict(B=4, missing=0.1, fit=dict()),
    "fixed_H_u_diagonal_R": dict(B=2, fit=dict(fixed=("H", "u"), R_structure="diagonal")),
    "isotropic_R_fixed_F": dict(B=2, fit=dict(fixed=("F", "P1"), R_structure="isotropic")),
    "per_step_emissions": dict(B=12, T=8, fit=dict(emissions="per_step")),
    "fixed_diffusion": dict(B=2, T=30, fit=dict(fixed=("L", "H"), mstep_iters=10)),
    "irregular": dict(B=2, T=25, irregular=True, missing=0.2, fit=dict(mstep_iters=10)),
}


@pytest.mark.parametrize("path", PATHS)
def test_sde_em_loglik_never_decreases(rng, key, path):
    cfg = PATHS[path]
    B, T = cfg["B"], cfg.get("T", 60)
    truth = random_sde(rng, 2, 2)
    if cfg.get("irregular"):
        times = np.cumsum(rng.uniform(0.05, 0.5, size=T))
        kw = dict(times=times)
    else:
        times, kw = None, dict(dt=0.3)
    _, y = sdessm.simulate(
        key, truth, times, B, dt=kw.get("dt"), num_timesteps=None if times is not None else T
    )
    y = np.array(y)
    if cfg.get("missing"):
        y = with_missing(rng, y, cfg["missing"])
        y[:, -1] = 0.0  # no padding here
    init = _perturbed(rng, truth)
    res = sdessm.fit_em(
        init, y, num_iters=12, progress=False, tol=0.0, finish="none", **kw, **cfg["fit"]
    )
    _assert_monotone(res.log_likelihoods)
    assert res.num_iters == 12 and len(res.log_likelihoods) == 13
    # the last entry is the exact log-likelihood of the returned (recovered) SDE parameters
    np.testing.assert_allclose(
        res.log_likelihoods[-1], _total_loglik(res.params, y, **kw), rtol=1e-8
    )
    for name in cfg["fit"].get("fixed", ()):
        np.testing.assert_allclose(_value(res.params, name), _value(init, name), rtol=1e-8)
    R = np.asarray(res.params.R)
    if cfg["fit"].get("R_structure") == "diagonal":
        assert R[0, 1] == 0.0 and R[1, 0] == 0.0
    if cfg["fit"].get("R_structure") == "isotropic":
        np.testing.assert_allclose(R, R[0, 0] * np.eye(2), rtol=1e-12)
    if cfg["fit"].get("emissions") == "per_step":
        assert res.params.H.shape == (T, 2, 2) and res.params.R.shape == (T, 2, 2)


def _value(params, name):
    return np.asarray(params.Q if name == "L" else getattr(params, name))


# --------------------------------------------------------------------------- M-step optimality

MSTEP_CASES = {
    "all_free": (frozenset(), "full"),
    "H_fixed": (frozenset({"H"}), "full"),
    "u_fixed": (frozenset({"u"}), "diagonal"),
    "A_mu1_fixed": (frozenset({"A", "mu1"}), "full"),
    "isotropic": (frozenset({"Sigma", "P1"}), "isotropic"),
}


@pytest.mark.parametrize("case", MSTEP_CASES)
def test_closed_form_mstep_maximises_expected_complete_loglik(rng, key, case):
    fixed, structure = MSTEP_CASES[case]
    truth = random_sde(rng, 2, 3)
    _, y = sdessm.simulate(key, truth, dt=0.2, num_timesteps=20, num_sequences=3)
    y = with_missing(rng, y, 0.2)
    y[:, -1] = 1.0
    current, yb, *_ = resolve(_perturbed(rng, truth).discretize(dt=0.2), y)
    stats, _ = expected_stats(current, yb)
    new = closed_form_mstep(stats, current, fixed, structure)
    for name in fixed:
        np.testing.assert_array_equal(getattr(new, name), getattr(current, name))

    q = jax.jit(lambda p: expected_complete_loglik(stats, p))
    grads = jax.jit(jax.grad(q))(new)
    for name in set(new._fields[:7]) - fixed:  # the model has no input gains
        g = np.asarray(getattr(grads, name))
        if name == "R" and structure == "diagonal":
            g = np.diag(g)  # only the diagonal is free
        if name == "R" and structure == "isotropic":
            g = np.trace(g)
        np.testing.assert_allclose(
            g, 0.0, atol=1e-8 * max(1.0, float(stats.num_emissions)), err_msg=name
        )
    # and it beats random feasible perturbations of the free fields
    base = float(q(new))
    for _ in range(5):
        trial = new._replace(
            **{
                name: _perturb_field(rng, getattr(new, name), name, structure)
                for name in set(new._fields[:7]) - fixed
            }
        )
        assert float(q(trial)) < base


def test_expected_complete_loglik_gradient_matches_finite_differences(rng, key):
    """The written-out gradient of the Gaussian terms, against central differences, at a point
    that is not the maximiser (one transition group per step)."""
    truth = random_sde(rng, 2, 3)
    times = np.cumsum(rng.uniform(0.05, 0.3, size=15))
    _, y = sdessm.simulate(key, truth, times, num_sequences=2)
    y = with_missing(rng, y, 0.2)
    start = _perturbed(rng, truth)
    reps, groups = step_groups(y, times, None)
    A_g, Sigma_g, per_transition = continuous_discrete(start, reps, groups)
    _, yb, *_ = resolve(per_transition, y)
    e_step = jax.jit(expected_stats, static_argnums=3, static_argnames="complete")
    stats, _ = e_step(per_transition, yb, groups, len(reps), complete=False)
    current = LGSSMParams(A_g, Sigma_g, *per_transition[2:])
    q = jax.jit(lambda p: expected_complete_loglik(stats, p))
    grads = jax.jit(jax.grad(q))(current)
    eps = 1e-6
    for name in current._fields[:7]:  # no input gains
        x = np.asarray(getattr(current, name))
        for _ in range(3):
            E = rng.normal(size=x.shape)
            if name in ("Sigma", "R", "P1"):  # symmetrically and relative to their own size
                E = x @ E
                E = E + np.swapaxes(E, -1, -2)
            plus = q(current._replace(**{name: x + eps * E}))
            minus = q(current._replace(**{name: x - eps * E}))
            numeric = (plus - minus) / (2 * eps)
            analytic = np.sum(np.asarray(getattr(grads, name)) * E)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6, err_msg=name)


def _perturb_field(rng, x, name, structure):
    x = np.asarray(x)
    if name in ("Sigma", "R", "P1"):
        if name == "R" and structure == "isotropic":
            return x * 1.05
        E = rng.normal(size=x.shape) * 0.02
        E = E @ E.T
        if name == "R" and structure == "diagonal":
            E = np.diag(np.diag(E))
        return x + E * (1 if rng.uniform() < 0.5 else -0.5)
    return x + rng.normal(size=x.shape) * 0.02


# --------------------------------------------------------------------------- peer: pykalman EM


def test_discrete_em_iterates_match_pykalman(rng, key):
    """Iteration by iteration against pykalman's `em` on the same discrete model and start.

    Conventions: pykalman's state starts at the first observation like ours; it has no joint
    [H u] update (it updates H with the offset held), so u is held fixed on both sides, and its
    transition offset is zero. pykalman 0.11 does not symmetrise Sigma, whose asymmetry grows
    each iteration, so it leaves the exact path after about 15 iterations: we compare the first
    8, where both are exact (log-likelihoods to 1e-8 relative, parameters to 1e-7).
    """
    pykalman = pytest.importorskip("pykalman")
    truth = random_sde(rng, 2, 2)
    _, y = sdessm.simulate(key, truth, dt=0.3, num_timesteps=80)
    y = np.asarray(y)
    init = _perturbed(rng, truth).discretize(dt=0.3)
    A, Sigma, H, u, R, mu1, P1 = (np.asarray(a) for a in init[:7])
    em_vars = [
        "transition_matrices",
        "transition_covariance",
        "observation_matrices",
        "observation_covariance",
        "initial_state_mean",
        "initial_state_covariance",
    ]
    res = sdessm.fit_em(
        init, y, num_iters=8, tol=0.0, finish="none", fixed=("u",), accelerate=False,
        progress=False,
    )  # fmt: skip
    for k in range(1, 9):
        kf = pykalman.KalmanFilter(
            transition_matrices=A,
            observation_matrices=H,
            transition_covariance=Sigma,
            observation_covariance=R,
            transition_offsets=np.zeros(2),
            observation_offsets=u,
            initial_state_mean=mu1,
            initial_state_covariance=P1,
            em_vars=em_vars,
        ).em(y, n_iter=k)
        np.testing.assert_allclose(res.log_likelihoods[k], kf.loglikelihood(y), rtol=1e-8)
    got = res.params
    np.testing.assert_allclose(got.A, kf.transition_matrices, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.Sigma, kf.transition_covariance, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.H, kf.observation_matrices, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.R, kf.observation_covariance, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.mu1, kf.initial_state_mean, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.P1, kf.initial_state_covariance, rtol=1e-7, atol=1e-10)


# --------------------------------------------------------------------------- convergence


def test_converged_em_is_a_stationary_point(rng, key):
    # scalar OU observed with an offset: identifiable, EM converges quickly
    truth = scalar_ou(0.8, 0.9, u=0.5, R=0.3)
    _, y = sdessm.simulate(key, truth, dt=0.5, num_timesteps=400, num_sequences=3)
    init = truth._replace(F=[[-2.0]], L=[[0.4]], u=[0.0], R=[[1.0]])
    res = sdessm.fit_em(init, y, dt=0.5, fixed=("H",), num_iters=3000, tol=1e-13, progress=False)
    assert res.converged
    lg = res.discrete

    def loglik(A, Sigma, u, R, mu1, P1):
        p = lg._replace(A=A, Sigma=Sigma, u=u, R=R, mu1=mu1, P1=P1)
        return jnp.sum(sdessm.kalman_filter(p, y).log_likelihood)

    loglik = jax.jit(loglik)
    free = (lg.A, lg.Sigma, lg.u, lg.R, lg.mu1, lg.P1)
    grads = jax.grad(loglik, argnums=tuple(range(6)))(*free)
    for g in grads:
        np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-3)

    # a BFGS run started at the EM answer improves the log-likelihood by < 1e-6 relative
    def unpack(v):  # log-parametrised variances keep BFGS inside the valid region
        return (
            v[0:1, None],
            jnp.exp(v[1:2, None]),
            v[2:3],
            jnp.exp(v[3:4, None]),
            v[4:5],
            jnp.exp(v[5:6, None]),
        )

    value_and_grad = jax.jit(jax.value_and_grad(lambda v: -loglik(*unpack(v))))
    v0 = np.array(
        [
            lg.A[0, 0],
            np.log(lg.Sigma[0, 0]),
            lg.u[0],
            np.log(lg.R[0, 0]),
            lg.mu1[0],
            np.log(lg.P1[0, 0]),
        ]
    )
    fun = lambda v: tuple(np.asarray(a, dtype=float) for a in value_and_grad(v))  # noqa: E731
    best = scipy.optimize.minimize(fun, v0, jac=True, method="BFGS", options=dict(gtol=1e-9))
    improvement = -best.fun - res.log_likelihood
    assert improvement < 1e-6 * abs(res.log_likelihood), improvement


def test_closed_form_and_numerical_mstep_agree(rng, key):
    # Both maximise the same expected complete-data log-likelihood (the discrete <-> SDE map is a
    # bijection here), so their EM iterates coincide: a stronger check than agreeing at the end.
    truth = random_sde(rng, 2, 2, H=np.eye(2))._replace(
        L=np.array([[0.8, 0.0], [0.3, 0.6]]), R=0.01 * np.eye(2)
    )
    _, y = sdessm.simulate(key, truth, dt=0.3, num_timesteps=300, num_sequences=3)
    init = _perturbed(rng, truth)._replace(H=np.eye(2))
    kw = dict(
        dt=0.3, fixed=("H", "R", "mu1", "P1"), num_iters=20, tol=0.0, finish="none", progress=False
    )
    closed = sdessm.fit_em(init, y, accelerate=False, **kw)
    # a zero log-prior sends F, L and u through the numerical (L-BFGS) M-step
    numerical = sdessm.fit_em(
        init, y, log_prior=lambda p: 0.0, mstep_iters=60, accelerate=False, **kw
    )
    assert closed.report["path"] == "closed form" and "numerical" in numerical.report["path"]
    np.testing.assert_allclose(numerical.log_likelihoods, closed.log_likelihoods, rtol=1e-10)
    for name in ("F", "Q", "u"):
        a, b = getattr(closed.params, name), getattr(numerical.params, name)
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8, err_msg=name)


# --------------------------------------------------------------------------- recovery


def _eigen_se(F, cov_F):
    """Delta-method standard errors of the eigenvalues of F (sorted by imaginary part)."""

    def eig(f):
        w = np.linalg.eigvals(f.reshape(F.shape))
        w = w[np.lexsort((w.real, w.imag))]
        return np.concatenate([w.real, w.imag])

    base = eig(F.ravel())
    J = np.stack(
        [(eig(F.ravel() + h) - eig(F.ravel() - h)) / 2e-6 for h in np.eye(F.size) * 1e-6], axis=1
    )
    return base, np.sqrt(np.diag(J @ cov_F @ J.T))


def _check_recovery(res, truth, z=4.0):
    """Eigenvalues of F, Q and R (H = I: the observation frame) within z standard errors."""
    labels, estimate, cov = res.covariance()
    F_idx = [i for i, lab in enumerate(labels) if lab.startswith("F[")]
    F_hat = np.asarray(res.params.F)
    eig_hat, eig_se = _eigen_se(F_hat, cov[np.ix_(F_idx, F_idx)])
    eig_true, _ = _eigen_se(np.asarray(truth.F), cov[np.ix_(F_idx, F_idx)])
    assert np.all(np.abs(eig_hat - eig_true) <= z * eig_se + 1e-9), (eig_hat, eig_true, eig_se)
    se = res.standard_errors()
    for name in ("Q", "R"):
        err = np.abs(np.asarray(getattr(res.params, name)) - np.asarray(getattr(truth, name)))
        assert np.all(err < z * se[name]), (name, err, se[name])


def test_ou_recovery_within_standard_errors(key):
    truth = scalar_ou(0.7, 0.8, R=0.1, P1=0.5)
    _, y = sdessm.simulate(key, truth, dt=0.2, num_timesteps=1500, num_sequences=2)
    init = truth._replace(F=[[-2.0]], L=[[0.3]], R=[[0.5]])
    res = sdessm.fit_em(
        init, y, dt=0.2, fixed=("H", "u", "mu1", "P1"), num_iters=2000, tol=1e-11, progress=False
    )
    _check_recovery(res, truth)


@pytest.mark.slow
def test_three_dimensional_recovery_within_standard_errors(key):
    # 8 sequences of 5000 steps; H = I so F, Q, R are read in the observation frame
    F = np.array([[-0.4, 1.2, 0.0], [-1.2, -0.4, 0.3], [0.0, -0.2, -0.8]])
    L = np.array([[0.5, 0.0, 0.0], [0.1, 0.4, 0.0], [0.0, 0.2, 0.6]])
    R = np.array([[0.05, 0.01, 0.0], [0.01, 0.04, 0.0], [0.0, 0.0, 0.06]])
    truth = linear_sde(F, L, R=R)
    _, y = sdessm.simulate(key, truth, dt=0.1, num_timesteps=5000, num_sequences=8)
    init = truth._replace(F=-np.eye(3), L=0.3 * np.eye(3), R=0.2 * np.eye(3))
    res = sdessm.fit_em(
        init, y, dt=0.1, fixed=("H", "u", "mu1", "P1"), num_iters=3000, tol=1e-10, progress=False
    )
    assert res.converged
    _check_recovery(res, truth)


# --------------------------------------------------------------------------- SDE recovery


def test_sde_from_discrete_round_trip(rng):
    for d in (1, 2, 3):
        F = random_stable_drift(rng, d)
        L = rng.normal(size=(d, d))
        A, Sigma = sdessm.discretize(F, L, 0.4)
        F_hat, Q_hat = sdessm.sde_from_discrete(A, Sigma, 0.4)
        np.testing.assert_allclose(F_hat, F, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(Q_hat, L @ L.T, rtol=1e-8, atol=1e-10)


def test_diffusion_from_sigma_inverts_the_discretisation(rng):
    """Q back from Van Loan's Sigma under a known drift, stiff modes included (A singular in
    float64, where the logarithm does not exist)."""
    for d, stiff in ((1, False), (2, False), (3, False), (2, True)):
        F = random_stable_drift(rng, d)
        if stiff:
            F = np.diag([-500.0, -0.2])
        L = rng.normal(size=(d, d))
        A, Sigma = sdessm.discretize(F, L, 0.1)
        Q = diffusion_from_sigma(F, np.asarray(A), np.asarray(Sigma))
        np.testing.assert_allclose(Q, L @ L.T, rtol=1e-8, atol=1e-10)


def test_stiff_known_drift_with_a_rank_one_diffusion_runs_finite_and_monotone(key):
    """F = diag(-500, -0.2) held fixed (one mode decays within a step: A is singular), L of
    rank one, learning L, H, u, R and mu1: EM runs, never lowers the log-likelihood, and Q comes
    from Sigma without a logarithm."""
    truth = linear_sde(np.diag([-500.0, -0.2]), [[0.0], [0.5]], [[1.0, 0.0]], R=0.05)
    _, y = sdessm.simulate(key, truth, dt=0.1, num_timesteps=200)
    start = truth._replace(L=np.array([[0.1], [0.3]]), H=np.array([[0.8, 0.1]]), R=[[0.1]])
    res = sdessm.fit_em(start, y, dt=0.1, fixed=("F", "P1"), finish="none", progress=False)
    assert np.all(np.isfinite(res.log_likelihoods))
    _assert_monotone(res.log_likelihoods)
    np.testing.assert_array_equal(res.params.F, truth.F)
    assert np.linalg.eigvalsh(np.asarray(res.params.Q)).min() >= -1e-10


def test_no_real_logarithm(rng):
    with pytest.raises(sdessm.NoRealLogarithmError, match=r"eigenvalue\(s\) \[-0.5\] on the") as e:
        sdessm.sde_from_discrete([[-0.5]], [[1.0]], 0.1)
    assert "No real matrix logarithm exists" in str(e.value)
    with pytest.raises(sdessm.NoRealLogarithmError, match=r"singular: eigenvalue\(s\) \[0\] "):
        sdessm.sde_from_discrete([[1.0, 0.0], [0.0, 0.0]], np.eye(2), 0.1)
    # -0.5 I = expm(F) for F = log(0.5) I + pi [[0, -1], [1, 0]]: a real logarithm exists, at
    # the Nyquist frequency, and the message says so (eigenvalues printed without "+0j")
    F = np.log(0.5) * np.eye(2) + np.pi * np.array([[0.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(scipy.linalg.expm(F), -0.5 * np.eye(2), atol=1e-14)
    with pytest.raises(sdessm.NoRealLogarithmError, match="Nyquist frequency") as e:
        sdessm.sde_from_discrete(-0.5 * np.eye(2), np.eye(2), 1.0)
    assert "[-0.5, -0.5]" in str(e.value) and "j" not in str(e.value)
    with pytest.raises(sdessm.NoRealLogarithmError, match=r"\[0.9\+0.1i, 0.9-0.1i, -0.5\]"):
        sdessm.sde_from_discrete(
            scipy.linalg.block_diag([[0.9, -0.1], [0.1, 0.9]], -0.5), np.eye(3), 1
        )
    # data that flip sign at every step: EM fits A < 0, which no SDE produces at this step
    y = (5.0 * (-1.0) ** np.arange(60) + rng.normal(size=60) * 0.1)[:, None]
    init = scalar_ou(0.5, P1=10.0)
    with pytest.raises(sdessm.NoRealLogarithmError) as err:
        sdessm.fit_em(init, y, dt=1.0, fixed=("H", "u", "P1"), num_iters=30, progress=False)
    assert float(err.value.result.discrete.A[0, 0]) < 0  # the discrete fit is not lost


def test_indefinite_q_is_reported_or_replaced():
    # integrator F with Q = diag(-0.05, 1): Sigma over s = 1 is PD, the recovered Q is not PSD
    F, Q = np.array([[0.0, 1.0], [0.0, 0.0]]), np.diag([-0.05, 1.0])
    Sigma = np.array([[1 / 3 - 0.05, 0.5], [0.5, 1.0]])
    A = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert np.linalg.eigvalsh(Sigma).min() > 0
    np.testing.assert_allclose(sdessm.sde_from_discrete(A, Sigma, 1.0)[1], Q, atol=1e-10)
    lg = sdessm.LGSSMParams(A, Sigma, np.eye(2), np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    result = EMResult(lg, lg, np.zeros(1), True, 0, {})
    init = sdessm.SDEParams(F, np.eye(2), *lg[2:])
    with pytest.raises(sdessm.NotPSDError, match="most negative eigenvalue is -0.05") as err:
        _recover(result, init, 1.0, frozenset(), "report", {})
    assert err.value.result is result
    report = {}
    params = _recover(result, init, 1.0, frozenset(), "nearest", report)
    assert report["psd_replaced"] and report["Q_min_eigenvalue"] == pytest.approx(-0.05)
    np.testing.assert_allclose(params.Q, np.diag([0.0, 1.0]), atol=1e-10)


def test_nyquist_warning(key):
    dt, w = 0.1, 0.95 * np.pi / 0.1
    rot = linear_sde([[-0.1, -w], [w, -0.1]], 0.3, R=0.01)
    _, y = sdessm.simulate(key, rot, dt=dt, num_timesteps=50)
    with pytest.warns(sdessm.NyquistWarning, match="Nyquist"):
        res = sdessm.fit_em(
            rot, y, dt=dt, fixed=("F", "H", "u"), num_iters=2, psd="nearest", progress=False
        )
    assert 0 < res.report["nyquist_margin"] < 0.1 * np.pi / dt


# --------------------------------------------------------------------------- data handling


def test_padding_does_not_change_the_fit(rng, key):
    truth = random_sde(rng, 2, 1)
    _, y = sdessm.simulate(key, truth, dt=0.3, num_timesteps=40, num_sequences=2)
    y = np.array(y)
    y[1, 25:] = np.nan  # the second sequence is 25 long
    longer = np.concatenate([y, np.full((2, 10, 1), np.nan)], axis=1)
    init = _perturbed(rng, truth)
    a = sdessm.fit_em(init, y, dt=0.3, num_iters=5, tol=0.0, finish="none", progress=False)
    b = sdessm.fit_em(init, longer, dt=0.3, num_iters=5, tol=0.0, finish="none", progress=False)
    np.testing.assert_allclose(a.log_likelihoods, b.log_likelihoods, rtol=1e-10)
    for x1, x2 in zip(a.discrete[:7], b.discrete[:7], strict=True):
        np.testing.assert_allclose(x1, x2, rtol=1e-8, atol=1e-12)


def test_lgssm_fit_and_progress_bar(rng, key, capsys):
    truth = random_sde(rng, 2, 2)
    _, y = sdessm.simulate(key, truth, dt=0.3, num_timesteps=50, num_sequences=2)
    init = _perturbed(rng, truth).discretize(dt=0.3)
    res = sdessm.fit_em(init, y, num_iters=4, tol=0.0, finish="none", progress=True)
    assert isinstance(res.params, sdessm.LGSSMParams)
    _assert_monotone(res.log_likelihoods)
    assert "EM" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fixed=("G",)), "`fixed` names unknown field(s) ['G']"),
        (dict(R_structure="banded"), "`R_structure` must be one of"),
        (dict(emissions="each"), "`emissions` must be 'shared' or 'per_step'"),
        (dict(psd="clip"), "`psd` must be 'report' or 'nearest'"),
        (dict(num_iters=0), "`num_iters` must be >= 1"),
        (dict(tol=-1.0), "`tol` must be >= 0"),
        (dict(emissions="per_step"), "needs B >= 4"),
        (dict(structure=lambda th: th, fixed=("H",)), "`fixed` does not apply with `structure`"),
        (dict(log_prior=lambda p: 0.0, R_structure="diagonal"), "build them into the parameters"),
    ],
)
def test_bad_options(rng, kwargs, message):
    truth = random_sde(rng, 2, 2)
    with pytest.raises(ValueError, match=re.escape(message)):
        sdessm.fit_em(truth, np.zeros((5, 2)), dt=0.1, progress=False, **kwargs)


def test_bad_data_for_em(rng):
    truth = random_sde(rng, 2, 2)
    with pytest.raises(ValueError, match="at least 2 time steps"):
        sdessm.fit_em(truth, np.zeros((1, 2)), dt=0.1, progress=False)
    lg = truth.discretize(np.array([0.0, 0.1, 0.3]))
    with pytest.raises(ValueError, match="per-step `A`/`Sigma`"):
        sdessm.fit_em(lg, np.zeros((3, 2)), progress=False)
    with pytest.raises(ValueError, match="`times` must be strictly increasing"):
        sdessm.fit_em(truth, np.zeros((3, 2)), np.array([0.0, 0.2, 0.1]), progress=False)
    with pytest.raises(ValueError, match="`F` must be finite"):
        sdessm.fit_em(truth._replace(F=np.full((2, 2), np.inf)), np.zeros((3, 2)), dt=0.1)
    with pytest.raises(ValueError, match="`y` has 3 columns"):
        sdessm.fit_em(truth, np.zeros((3, 3)), dt=0.1)
    per_step_H = truth._replace(H=np.broadcast_to(np.asarray(truth.H), (3, 2, 2)))
    with pytest.raises(ValueError, match="supported only for a known per-step offset"):
        sdessm.fit_em(per_step_H, np.zeros((3, 2)), dt=0.1, progress=False)


def test_known_per_step_offset(rng, key):
    truth = random_sde(rng, 2, 2)
    T = 40
    offset = np.sin(np.arange(T) / 3.0)[:, None] * np.array([1.0, -2.0])  # a known u_k
    with_offset = truth._replace(u=offset)
    _, y = sdessm.simulate(key, with_offset, dt=0.3, num_timesteps=T, num_sequences=2)
    init = _perturbed(rng, truth)._replace(u=offset)
    res = sdessm.fit_em(
        init, y, dt=0.3, fixed=("u",), num_iters=10, tol=0.0, finish="none", progress=False
    )
    _assert_monotone(res.log_likelihoods)
    np.testing.assert_array_equal(res.params.u, offset)
    np.testing.assert_allclose(
        res.log_likelihoods[-1], _total_loglik(res.params, y, dt=0.3), rtol=1e-8
    )


# --------------------------------------------------------------------------- structured and MAP


def _oscillator(theta):
    """Damped oscillator in physical parameters: theta = log(omega, zeta, sigma, noise sd)."""
    omega, zeta, sigma, noise = jnp.exp(theta["log"])
    return sdessm.SDEParams(
        F=jnp.array([[0.0, 1.0], [-(omega**2), -2.0 * zeta * omega]]),
        L=jnp.stack([jnp.zeros(1), sigma[None]]),
        H=jnp.array([[1.0, 0.0]]),
        u=jnp.zeros(1),
        R=(noise**2)[None, None],
        mu1=jnp.zeros(2),
        P1=jnp.eye(2),
    )


def test_structured_em_recovers_named_parameters(key):
    truth = {"log": jnp.log(jnp.array([2.0, 0.1, 0.6, 0.15]))}
    times = np.cumsum(np.random.default_rng(3).uniform(0.05, 0.25, size=200))
    _, y = sdessm.simulate(key, _oscillator(truth), times, 2)
    init = {"log": jnp.log(jnp.array([1.5, 0.3, 1.0, 0.3]))}
    res = sdessm.fit_em(
        init, y, times, structure=_oscillator, num_iters=25, mstep_iters=15, progress=False
    )
    _assert_monotone(res.log_likelihoods)
    np.testing.assert_allclose(
        res.log_likelihoods[-1], _total_loglik(_oscillator(res.params), y, times), rtol=1e-10
    )
    est = np.exp(np.asarray(res.params["log"]))
    se = res.standard_errors()["log"] * est  # delta method
    assert np.all(np.abs(est - [2.0, 0.1, 0.6, 0.15]) < 4 * se), (est, se)
    assert isinstance(res.sde, sdessm.SDEParams)


def test_squarem_reaches_the_plain_em_fixed_point_in_fewer_steps(key):
    truth = {"log": jnp.log(jnp.array([2.0, 0.1, 0.6, 0.15]))}
    _, y = sdessm.simulate(key, _oscillator(truth), dt=0.1, num_timesteps=150)
    init = {"log": jnp.log(jnp.array([1.5, 0.3, 1.0, 0.3]))}
    kw = dict(
        dt=0.1, structure=_oscillator, num_iters=1500, tol=1e-11, finish="none", progress=False
    )
    plain = sdessm.fit_em(init, y, accelerate=False, **kw)
    fast = sdessm.fit_em(init, y, **kw)
    for res in (plain, fast):  # both stopped by EM's own rule, before the iteration limit
        assert res.report["stopped"] == "the gain per iteration fell below tol = 1e-11"
    _assert_monotone(fast.log_likelihoods)
    np.testing.assert_allclose(fast.log_likelihood, plain.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(fast.params["log"], plain.params["log"], rtol=1e-3, atol=1e-4)
    assert 3 * fast.num_iters < plain.num_iters  # three E-steps per accelerated iteration


@pytest.mark.parametrize("irregular", [False, True], ids=["closed_form", "numerical_transitions"])
def test_squarem_reaches_the_maximum_where_plain_em_crawls(irregular):
    """A 2-D OU seen in full with an unknown offset u: EM trades u against the latent level
    and crawls (plain EM is still short after many E-steps); SQUAREM on the closed-form path
    (uniform steps) and on the numerical-transitions path (irregular steps) reaches a point
    where the exact log-likelihood's gradient vanishes, with fewer E-steps, monotonely."""
    truth = linear_sde([[-0.3, 0.4], [-0.4, -0.5]], 0.5, u=[1.5, -1.0], R=0.1)
    if irregular:
        kw = dict(times=np.cumsum(np.random.default_rng(0).uniform(0.05, 0.15, size=200)))
    else:
        kw = dict(dt=0.1)
    _, y = sdessm.simulate(jax.random.key(0), truth, num_timesteps=None if irregular else 300, **kw)
    start = truth._replace(F=-np.eye(2), L=np.eye(2), u=np.zeros(2), R=np.eye(2))
    fit = functools.partial(
        sdessm.fit_em, start, y, fixed=("P1", "H"), tol=1e-9, finish="none", progress=False,
        mstep_iters=10, **kw
    )  # fmt: skip
    fast = fit(num_iters=600)
    assert fast.report["stopped"] == "the gain per iteration fell below tol = 1e-09"
    _assert_monotone(fast.log_likelihoods)
    plain = fit(num_iters=3 * fast.num_iters, accelerate=False)  # as many E-steps, or more
    assert plain.log_likelihood < fast.log_likelihood - 0.1

    def loglik(F, Q, u, R, mu1):
        L = jnp.linalg.cholesky(Q)
        params = fast.params._replace(F=F, L=L, u=u, R=R, mu1=mu1)
        return jnp.sum(sdessm.kalman_filter(params, y, **kw).log_likelihood)

    p = fast.params
    grads = jax.grad(loglik, argnums=tuple(range(5)))(p.F, p.Q, p.u, p.R, p.mu1)
    for g in grads:
        np.testing.assert_allclose(np.asarray(g), 0.0, atol=2e-3)


def test_map_adds_the_log_prior_and_is_monotone(key):
    truth = {"log": jnp.log(jnp.array([2.0, 0.1, 0.6, 0.15]))}
    _, y = sdessm.simulate(key, _oscillator(truth), dt=0.1, num_timesteps=80)
    init = {"log": jnp.log(jnp.array([1.5, 0.3, 1.0, 0.3]))}
    centre = jnp.log(jnp.array([1.0, 0.5, 1.0, 1.0]))

    def log_prior(theta):  # a strong prior pulls the estimate towards `centre`
        return -0.5 * jnp.sum(((theta["log"] - centre) / 0.2) ** 2)

    mle = sdessm.fit_em(init, y, dt=0.1, structure=_oscillator, num_iters=40, progress=False)
    map_ = sdessm.fit_em(
        init, y, dt=0.1, structure=_oscillator, log_prior=log_prior, num_iters=40, progress=False
    )
    _assert_monotone(map_.report["log_posteriors"])
    dist = lambda r: float(jnp.linalg.norm(r.params["log"] - centre))  # noqa: E731
    assert dist(map_) < dist(mle)
    assert map_.log_likelihood <= mle.log_likelihood + 1e-6
    # the MAP objective at the MAP estimate beats the MLE's
    assert (
        map_.report["log_posteriors"][-1]
        >= mle.log_likelihood + float(log_prior(mle.params)) - 1e-6
    )


def test_map_on_sde_params(rng, key):
    truth = random_sde(rng, 2, 2, H=np.eye(2))
    _, y = sdessm.simulate(key, truth, dt=0.3, num_timesteps=40, num_sequences=2)

    def log_prior(p):
        return -0.5 * jnp.sum(p.F**2)  # shrink the drift

    res = sdessm.fit_em(
        _perturbed(rng, truth)._replace(H=np.eye(2)),
        y,
        dt=0.3,
        fixed=("H",),
        log_prior=log_prior,
        num_iters=8,
        tol=0.0,
        finish="none",
        mstep_iters=10,
        progress=False,
    )
    _assert_monotone(res.report["log_posteriors"])
    np.testing.assert_array_equal(res.params.H, np.eye(2))
    assert isinstance(res.params, sdessm.SDEParams)


# --------------------------------------------------------------------------- standard errors


def test_standard_errors_match_finite_difference_information(rng, key):
    truth = scalar_ou(0.8, 0.9, u=0.5, R=0.3)
    _, y = sdessm.simulate(key, truth, dt=0.5, num_timesteps=200, num_sequences=2)
    res = sdessm.fit_em(
        truth, y, dt=0.5, fixed=("H", "mu1", "P1"), num_iters=2000, tol=1e-12, progress=False
    )
    se = res.standard_errors()
    assert set(se) == {"F", "Q", "u", "R"}
    est = np.array([res.params.F[0, 0], res.params.Q[0, 0], res.params.u[0], res.params.R[0, 0]])

    @jax.jit
    def loglik(v):
        p = res.params._replace(F=v[0:1, None], L=jnp.sqrt(v[1:2, None]), u=v[2:3], R=v[3:4, None])
        return jnp.sum(sdessm.kalman_filter(p, y, dt=0.5).log_likelihood)

    h = 1e-4 * np.maximum(1.0, np.abs(est))
    hess = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            e_i, e_j = np.eye(4)[i] * h[i], np.eye(4)[j] * h[j]
            hess[i, j] = (
                loglik(est + e_i + e_j)
                - loglik(est + e_i - e_j)
                - loglik(est - e_i + e_j)
                + loglik(est - e_i - e_j)
            ) / (4 * h[i] * h[j])
    expected = np.sqrt(np.diag(np.linalg.inv(-hess)))
    got = [se["F"][0, 0], se["Q"][0, 0], se["u"][0], se["R"][0, 0]]
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_standard_errors_of_ou_drift_match_asymptotics(key):
    # nearly noise-free, finely sampled OU: Var(theta_hat) ~ 2 theta / (total time)
    theta, total = 1.0, 3 * 600 * 0.1
    truth = scalar_ou(theta, R=1e-6, P1=0.5)
    _, y = sdessm.simulate(key, truth, dt=0.1, num_timesteps=600, num_sequences=3)
    res = sdessm.fit_em(
        truth, y, dt=0.1, fixed=("H", "u", "R", "mu1", "P1"), num_iters=200, progress=False
    )
    se = res.standard_errors()["F"][0, 0]
    np.testing.assert_allclose(se, np.sqrt(2 * theta / total), rtol=0.15)


def test_standard_errors_name_the_unidentified_direction(rng, key):
    truth = random_sde(rng, 2, 2)
    _, y = sdessm.simulate(key, truth, dt=0.3, num_timesteps=15, num_sequences=2)
    # F, L, H all free: refused by default, run when asked for explicitly
    res = sdessm.fit_em(truth, y, dt=0.3, fixed=(), num_iters=3, progress=False)
    with pytest.raises(ValueError, match="not positive definite.*do not identify"):
        res.standard_errors()


@pytest.mark.parametrize("unrolled", [False, True])
def test_safeguard_keeps_a_step_only_if_the_objective_does_not_fall(unrolled):
    """`_safeguard` against a concave quadratic with its maximum at 1: a good step is kept, an
    overshoot is halved until it helps, a step that never helps returns the start (the points
    evaluated by `lax.map`, or one after another)."""
    from sdessm.iteration import safeguard

    def _safeguard(*args, **kwargs):
        return safeguard(*args, **kwargs, unrolled=unrolled)

    objective = jax.jit(lambda th: -((th["x"] - 1.0) ** 2))
    start = {"x": jnp.asarray(0.0)}
    kept = _safeguard(objective, start, {"x": jnp.asarray(0.8)})
    assert float(kept["x"]) == 0.8
    halved = _safeguard(objective, start, {"x": jnp.asarray(3.0)})  # 3 is worse; 1.5 is not
    assert float(halved["x"]) == 1.5
    never = _safeguard(objective, start, {"x": jnp.asarray(-1000.0)}, halvings=3)
    assert float(never["x"]) == 0.0
    assert float(_safeguard(objective, start, {"x": jnp.asarray(jnp.nan)})["x"]) == 0.0


def test_safeguard_via_equals_the_nested_safeguards():
    """The one-`lax.map` form equals checking `new` against `fallback`, then the result against
    `old`, point by point (objective: a concave quadratic with its maximum at 1), NaN included."""
    from sdessm.iteration import safeguard as _safeguard
    from sdessm.iteration import safeguard_via as _safeguard_via

    objective = lambda th: -((th["x"] - 1.0) ** 2)  # noqa: E731

    @jax.jit
    def both(old, fallback, new):
        pts = [{"x": v} for v in (old, fallback, new)]
        nested = _safeguard(objective, pts[0], _safeguard(objective, pts[1], pts[2]), halvings=0)
        return _safeguard_via(objective, *pts)["x"], nested["x"]

    for old in (0.0, 1.4, -2.0, np.nan):
        for fallback in (0.5, -0.5, 3.0):
            for new in (0.9, 2.0, 40.0, -100.0, np.nan):
                via, nested = both(*(jnp.asarray(v) for v in (old, fallback, new)))
                np.testing.assert_array_equal(via, nested, err_msg=f"{old}, {fallback}, {new}")


@pytest.mark.parametrize("checked", [True, False])
def test_squarem_extrapolates_only_to_valid_points_and_never_loses(checked):
    """A linear EM map s -> 0.9 s + 0.01 (objective -(s - 0.1)^2), with a `valid` region
    s >= 0.3 that excludes its fixed point: SQUAREM's extrapolation toward it is shortened
    until the point is valid (and skipped when no shortening is), the objective never falls,
    and the step bound starts at plain EM. Without the check the extrapolation leaves the
    region (so the test can tell)."""
    from sdessm.iteration import squarem

    seen, refused = [], []

    def step(theta):
        seen.append(float(theta["s"]))
        return {"s": 0.9 * theta["s"] + 0.01}, -((theta["s"] - 0.1) ** 2), jnp.zeros(())

    def valid(theta):
        ok = float(theta["s"]) >= 0.3
        refused.extend([] if ok else [float(theta["s"])])
        return ok

    accelerated = squarem(step, valid=valid if checked else None)
    theta, lls, extrapolated = {"s": jnp.asarray(1.0)}, [], []
    for _ in range(4):
        before = len(seen)
        theta, ll, _ = accelerated(theta)
        lls.append(float(ll))
        if len(seen) - before == 3:  # the third point a call evaluates is the extrapolated one
            extrapolated.append(seen[-1])
    assert np.all(np.diff(lls) >= 0), lls
    assert seen[:2] == pytest.approx([1.0, 0.91])  # bound 1 at first: plain EM, two steps
    assert extrapolated  # the bound grew and SQUAREM extrapolated
    if checked:
        assert refused and min(extrapolated) >= 0.3, (extrapolated, refused)
    else:
        assert min(extrapolated) < 0.3


def test_covariances_valid_allows_round_off_and_singular_but_not_negative():
    from sdessm.iteration import covariances_valid

    good = LGSSMParams(
        A=np.eye(2), Sigma=np.diag([1.0, 0.0]), H=np.eye(2), u=np.zeros(2),
        R=jnp.ones((4, 2, 2)), mu1=np.zeros(2), P1=np.eye(2) * 1e-8,
    )  # fmt: skip  # a singular Sigma, R per step and rank one, a tiny P1
    assert covariances_valid(good)
    assert covariances_valid(good._replace(Sigma=np.diag([1.0, -1e-14])))  # round-off
    assert not covariances_valid(good._replace(Sigma=np.diag([1.0, -1e-3])))
    assert not covariances_valid(good._replace(R=good.R.at[3, 0, 0].set(-1.0)))
    assert not covariances_valid(good._replace(P1=np.full((2, 2), np.nan)))
    assert covariances_valid(good._replace(Sigma=-np.eye(2)), names=("R", "P1"))


def test_the_finish_reuses_its_programs_and_not_the_data(key):
    """A second fit of the same form on other data of the same shape uses the programs the
    first compiled (no new entry), and its result is that of a fit with fresh programs."""
    from sdessm import information

    truth = scalar_ou(0.8, 0.9, u=0.5, R=0.3)
    _, y = sdessm.simulate(key, truth, dt=0.5, num_timesteps=150, num_sequences=2)
    init = truth._replace(F=[[-2.0]], L=[[0.4]], u=[0.0], R=[[1.0]])
    fit = functools.partial(sdessm.fit_em, init, dt=0.5, fixed=("H", "P1"), progress=False)
    fit(y)
    kept = len(information._PROGRAMS)
    other = fit(np.asarray(y)[:, ::-1] * 1.5)
    assert len(information._PROGRAMS) == kept
    information._PROGRAMS.clear()
    fresh = fit(np.asarray(y)[:, ::-1] * 1.5)
    assert other.converged and fresh.converged
    assert other.log_likelihood == fresh.log_likelihood
    np.testing.assert_array_equal(other.standard_errors()["F"], fresh.standard_errors()["F"])


def test_gaussian_term_gradient_equals_differentiating_the_cholesky_form(rng):
    from jax.scipy.linalg import cho_solve

    from sdessm.mstep import _gaussian_term

    def plain(residual, cov, n):  # JAX differentiates the factorisation and the solves
        chol = jnp.linalg.cholesky(jnp.broadcast_to(cov, residual.shape))
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        trace = jnp.trace(cho_solve((chol, True), residual), axis1=-2, axis2=-1)
        return -0.5 * (n * (3 * jnp.log(2.0 * jnp.pi) + log_det) + trace)

    cov = np.stack([random_spd(rng, 3) for _ in range(5)])
    residual = np.stack([random_spd(rng, 3) for _ in range(5)])
    n, w = np.arange(1.0, 6.0), rng.normal(size=5)
    for shared in (False, True):  # a batch of covariances, or one shared by every term
        c = cov[0] if shared else cov
        ours = jax.jit(jax.grad(lambda r, c: jnp.sum(w * _gaussian_term(r, c, n)), (0, 1)))
        ref = jax.jit(jax.grad(lambda r, c: jnp.sum(w * plain(r, c, n)), (0, 1)))
        ours, ref = ours(residual, c), ref(residual, c)
        np.testing.assert_allclose(
            _gaussian_term(residual, c, n), plain(residual, c, n), rtol=1e-13
        )
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())
    # forward mode too (a JVP rule): second derivatives in the covariance
    hess = [
        jax.jit(jax.hessian(lambda c, f=f: jnp.sum(w * f(residual, c, n))))(cov[0])
        for f in (_gaussian_term, plain)
    ]
    np.testing.assert_allclose(hess[0], hess[1], rtol=1e-10, atol=1e-10 * np.abs(hess[1]).max())


def test_fit_em_refuses_data_with_nothing_observed(key):
    """No observed value, or a column with none: an error before any iteration, naming it."""
    from sdessm.models import load

    ou = load("ou")
    times = np.arange(20) * 0.5
    sde = ou.to_sde(**{k: jnp.asarray(v) for k, v in ou.TRUE_PARAMS.items()})
    empty = np.full((20, 1), np.nan)
    with pytest.raises(ValueError, match="no observed value"):
        sdessm.fit_em(sde, empty, times, num_iters=3)
    with pytest.raises(ValueError, match="no observed value"):
        sdessm.fit_em(ou.model, empty, times, num_iters=3)
    with pytest.raises(ValueError, match="the posterior would be the prior"):
        sdessm.infer.fit_nuts(ou.model, empty, times, num_warmup=2, num_samples=2, num_chains=1)
    two = sdessm.SDEParams(
        *(
            jnp.asarray(a)
            for a in load("multivariate_ou").to_sde(**load("multivariate_ou").TRUE_PARAMS)[:7]
        )
    )
    y = np.array(sdessm.simulate(key, two, times)[1])
    y[:, 1] = np.nan
    with pytest.raises(ValueError, match="column 1 of `y` has no observed value"):
        sdessm.fit_em(two, y, times, num_iters=3)


def test_all_nan_steps_keep_the_fixed_point_of_em(key):
    """All-NaN steps add no emission statistic: EM's fixed point is still the maximum of the
    exact likelihood (one iteration from the certified maximum stays there), and that likelihood
    is the one of the data without those steps, on the irregular times that are left."""
    truth = linear_sde([[-0.5, 1.0], [-1.0, -0.3]], 0.5, u=[1.0, -1.0], R=0.3)
    times = np.arange(150) * 0.2
    y = np.array(sdessm.simulate(key, truth, times)[1])
    rows = np.random.default_rng(1).uniform(size=150) < 0.4
    rows[[0, -1]] = False
    y[rows] = np.nan
    y[5, 0] = np.nan  # and a partly missing one
    start = truth._replace(F=-np.eye(2), L=np.eye(2), R=np.eye(2), u=np.zeros(2))
    fit = sdessm.fit_em(start, y, times, fixed=("P1", "H"), progress=False)
    assert fit.converged
    again = sdessm.fit_em(
        fit.params, y, times, fixed=("P1", "H"), num_iters=1, finish="none", progress=False
    )
    for name in ("F", "Q", "u", "R", "mu1"):
        np.testing.assert_allclose(
            getattr(again.params, name), getattr(fit.params, name), atol=2e-5, err_msg=name
        )
    kept = ~rows
    np.testing.assert_allclose(
        sdessm.log_likelihood(fit.params, y[kept], times[kept]),
        sdessm.log_likelihood(fit.params, y, times),
        rtol=1e-12,
    )
