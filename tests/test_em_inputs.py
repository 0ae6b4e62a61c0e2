"""EM with known inputs: the gains B (drift) and D (observations) fitted on uniform steps.

The E-step regresses x_{k+1} on [x_k; v_k] and y_k on [x_k; 1; v_k]. References: sums built by
hand from the RTS smoother's moments, `sdessm.log_likelihood`, the gradient of the expected
complete-data log-likelihood (JAX), SciPy's BFGS on the exact log-likelihood, the truth of
simulated data (within standard errors), and the fit of the same model without gains.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import sdessm
from sdessm.mstep import closed_form_mstep, expected_complete_loglik
from sdessm.stats import expected_stats

RTOL = 1e-9


# --------------------------------------------------------------------------- helpers


def _lgssm(rng, d=2, p=2, m=1, T=None):
    """A stable discrete model with gains B (d, m) and D (p, m); per-step A, Sigma, B when
    `T` is given (one per transition, T - 1 of them)."""

    def stable():
        A = rng.normal(size=(d, d))
        return 0.8 * A / np.max(np.abs(np.linalg.eigvals(A)))

    def spd(n):
        X = rng.normal(size=(n, n))
        return X @ X.T / n + 0.3 * np.eye(n)

    if T is None:
        A, Sigma, B = stable(), spd(d), rng.normal(size=(d, m))
    else:
        A = np.stack([stable() for _ in range(T - 1)])
        Sigma = np.stack([spd(d) for _ in range(T - 1)])
        B = rng.normal(size=(T - 1, d, m))
    return sdessm.LGSSMParams(
        A=jnp.asarray(A),
        Sigma=jnp.asarray(Sigma),
        H=jnp.asarray(rng.normal(size=(p, d))),
        u=jnp.asarray(rng.normal(size=p)),
        R=jnp.asarray(spd(p)),
        mu1=jnp.asarray(rng.normal(size=d)),
        P1=jnp.asarray(spd(d)),
        B=jnp.asarray(B),
        D=jnp.asarray(rng.normal(size=(p, m))),
    )


def _observations(rng, T, p, missing):
    """Gaussian data with NaN at `missing` ((row, column) pairs; column None: the whole row)."""
    y = rng.normal(size=(T, p))
    for k, j in missing:
        y[k, slice(None) if j is None else j] = np.nan
    return y


def _smoothed_sums(params, y, v):
    """The E-step sums by hand from `rts_smoother`'s moments: per transition k (k = 1..T-1)
    E[a_k a_k^T], E[x_{k+1} a_k^T], E[x_{k+1} x_{k+1}^T] with a_k = [x_k; v_k], and per step
    E[z_k z_k^T], E[y_k z_k^T] with z_k = [x_k; 1; v_k] (the latter for observed y only)."""
    res = sdessm.rts_smoother(params, y, inputs=v)
    m = np.asarray(res.smoothed_means)
    P = np.asarray(res.smoothed_covs)
    C = np.asarray(res.cross_covs)
    T, d = m.shape
    k_in = v.shape[1]
    aa, xa, xx_next = [], [], []
    for k in range(T - 1):
        Eaa = np.zeros((d + k_in, d + k_in))
        Eaa[:d, :d] = P[k] + np.outer(m[k], m[k])
        Eaa[:d, d:] = np.outer(m[k], v[k])
        Eaa[d:, :d] = Eaa[:d, d:].T
        Eaa[d:, d:] = np.outer(v[k], v[k])
        Exa = np.concatenate([C[k] + np.outer(m[k + 1], m[k]), np.outer(m[k + 1], v[k])], axis=1)
        aa.append(Eaa)
        xa.append(Exa)
        xx_next.append(P[k + 1] + np.outer(m[k + 1], m[k + 1]))
    zz, yz = [], []
    for k in range(T):
        z = np.concatenate([m[k], [1.0], v[k]])
        Ezz = np.outer(z, z)
        Ezz[:d, :d] += P[k]
        zz.append(Ezz)
        yz.append(np.outer(y[k], z))
    return {
        "aa": np.stack(aa),
        "xa": np.stack(xa),
        "xx_next": np.stack(xx_next),
        "zz": np.stack(zz),
        "yz": np.stack(yz),
        "x1": m[0],
        "x1x1": P[0] + np.outer(m[0], m[0]),
        "loglik": float(res.log_likelihood),
    }


def _close(a, b, rtol=RTOL, atol=1e-11):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- E-step


def test_expected_stats_match_smoother_sums(rng):
    """S00, S10, S11, x1, x1x1 equal the sums of the smoother's moments, with NaN entries and an
    all-NaN row inside the series; the log-likelihood equals `log_likelihood(..., inputs=)`."""
    T, d, p, m = 8, 2, 2, 1
    params = _lgssm(rng, d, p, m)
    y = _observations(rng, T, p, [(1, 0), (3, None), (5, 1), (6, 0)])
    v = rng.normal(size=(T, m))
    stats, logliks = expected_stats(params, jnp.asarray(y)[None], inputs=jnp.asarray(v)[None])
    ref = _smoothed_sums(params, y, v)
    assert stats.S00.shape == (1, d + m, d + m)
    assert stats.S10.shape == (1, d, d + m)
    assert stats.S11.shape == (1, d, d)
    _close(stats.S00[0], ref["aa"].sum(0))
    _close(stats.S10[0], ref["xa"].sum(0))
    _close(stats.S11[0], ref["xx_next"].sum(0))
    _close(stats.x1, ref["x1"])
    _close(stats.x1x1, ref["x1x1"])
    _close(stats.num_transitions, [T - 1.0])
    _close(stats.num_sequences, 1.0)
    _close(logliks[0], ref["loglik"])
    _close(logliks[0], sdessm.log_likelihood(params, y, inputs=v))


def test_expected_stats_emissions_complete_data(rng):
    """With complete data yy = sum y y^T, yx = sum y [m; 1; v]^T, xx = sum E[z z^T]."""
    T, d, p, m = 8, 2, 2, 1
    params = _lgssm(rng, d, p, m)
    y = _observations(rng, T, p, [])
    v = rng.normal(size=(T, m))
    ref = _smoothed_sums(params, y, v)
    for complete in (False, True):
        stats, logliks = expected_stats(
            params, jnp.asarray(y)[None], complete=complete, inputs=jnp.asarray(v)[None]
        )
        assert stats.yx.shape == (p, d + 1 + m)
        assert stats.xx.shape == (d + 1 + m, d + 1 + m)
        _close(stats.yy, y.T @ y)
        _close(stats.yx, ref["yz"].sum(0))
        _close(stats.xx, ref["zz"].sum(0))
        _close(stats.num_emissions, float(T))
        _close(stats.S00[0], ref["aa"].sum(0))
        _close(stats.S10[0], ref["xa"].sum(0))
        _close(logliks[0], sdessm.log_likelihood(params, y, inputs=v))


def test_expected_stats_groups_match_smoother_sums(rng):
    """Irregular steps: per-step A, Sigma, B; each group's S00, S10, S11 sum the transitions of
    that group."""
    T, d, p, m = 8, 2, 2, 1
    params = _lgssm(rng, d, p, m, T=T)
    y = _observations(rng, T, p, [(2, 1), (4, None)])
    v = rng.normal(size=(T, m))
    groups = np.array([0, 1, 1, 0, 1, 0, 0], dtype=np.int32)
    stats, logliks = expected_stats(
        params, jnp.asarray(y)[None], jnp.asarray(groups), 2, inputs=jnp.asarray(v)[None]
    )
    ref = _smoothed_sums(params, y, v)
    for g in (0, 1):
        sel = groups == g
        _close(stats.S00[g], ref["aa"][sel].sum(0))
        _close(stats.S10[g], ref["xa"][sel].sum(0))
        _close(stats.S11[g], ref["xx_next"][sel].sum(0))
        _close(stats.num_transitions[g], float(sel.sum()))
    _close(logliks[0], sdessm.log_likelihood(params, y, inputs=v))


# --------------------------------------------------------------------------- M-step


FIELDS = ("A", "B", "H", "u", "D", "Sigma", "R", "mu1", "P1")


def _gradients(stats, params, names):
    """d E[log p(x, y)] / d field at `params`, scaled by 1 + the largest statistic."""
    scale = 1.0 + max(float(jnp.max(jnp.abs(s))) for s in (stats.S00, stats.xx, stats.yy))
    fields = {k: getattr(params, k) for k in names}
    grad = jax.grad(lambda f: expected_complete_loglik(stats, params._replace(**f)))(fields)
    return {k: float(jnp.max(jnp.abs(g))) / scale for k, g in grad.items()}


@pytest.mark.parametrize("fixed", [frozenset(), frozenset({"A"}), frozenset({"D"})])
def test_closed_form_mstep_is_the_maximiser(rng, fixed):
    """After the M-step the gradient of the expected complete-data log-likelihood with respect
    to every free field vanishes; held fields keep their values."""
    T, d, p, m = 8, 2, 2, 1
    current = _lgssm(rng, d, p, m)
    y = _observations(rng, T, p, [(1, 0), (4, None), (6, 1)])
    v = rng.normal(size=(T, m))
    stats, _ = expected_stats(current, jnp.asarray(y)[None], inputs=jnp.asarray(v)[None])
    new = closed_form_mstep(stats, current, fixed)
    assert new.B.shape == (d, m) and new.D.shape == (p, m)
    for name in fixed:
        np.testing.assert_array_equal(getattr(new, name), getattr(current, name))
    grads = _gradients(stats, new, [k for k in FIELDS if k not in fixed])
    assert max(grads.values()) < 1e-8, grads
    # and the objective rose
    assert expected_complete_loglik(stats, new) >= expected_complete_loglik(stats, current)


# --------------------------------------------------------------------------- EM vs BFGS


def _driven_ou():
    T, dt = 300, 0.5
    v = np.where((np.arange(T) // 20) % 2 == 0, 1.0, -0.5)[:, None]
    v[150:] += 0.7
    true = sdessm.SDEParams(
        F=jnp.array([[-0.5]]),
        L=jnp.array([[0.6]]),
        H=jnp.eye(1),
        u=jnp.array([0.3]),
        R=jnp.array([[0.2]]),
        mu1=jnp.zeros(1),
        P1=jnp.eye(1),
        B=jnp.array([[1.2]]),
        D=jnp.array([[0.4]]),
    )
    times = np.arange(T) * dt
    _, y = sdessm.simulate(jax.random.key(0), true, times, inputs=v)
    return true, np.array(y), times, v


def _ou_params(theta):
    """SDEParams of the 1-D driven OU from theta = (F, log L, u, log R, mu1, B, D)."""
    one = lambda x: jnp.reshape(x, (1, 1))  # noqa: E731
    return sdessm.SDEParams(
        F=one(theta[0]),
        L=one(jnp.exp(theta[1])),
        H=jnp.eye(1),
        u=jnp.reshape(theta[2], (1,)),
        R=one(jnp.exp(theta[3])),
        mu1=jnp.reshape(theta[4], (1,)),
        P1=jnp.eye(1),
        B=one(theta[5]),
        D=one(theta[6]),
    )


def _ou_theta(sde):
    return np.array([
        float(sde.F[0, 0]),
        np.log(abs(float(sde.L[0, 0]))),
        float(sde.u[0]),
        np.log(float(sde.R[0, 0])),
        float(sde.mu1[0]),
        float(sde.B[0, 0]),
        float(sde.D[0, 0]),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def driven_ou_mle():
    """The maximum-likelihood estimate of the driven OU by SciPy's BFGS on the exact
    log-likelihood (JAX gradients), from a start away from the truth."""
    _, y, times, v = _driven_ou()
    loss = jax.jit(
        jax.value_and_grad(lambda th: -sdessm.log_likelihood(_ou_params(th), y, times, inputs=v))
    )
    fun = lambda th: tuple(np.asarray(a, dtype=float) for a in loss(jnp.asarray(th)))  # noqa: E731
    start = np.array([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    res = scipy.optimize.minimize(fun, start, jac=True, method="BFGS", options={"gtol": 1e-8})
    return res.x, -res.fun


def _ou_start():
    return _ou_params(jnp.array([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("finish", ["certify", "polish"])
def test_em_fixed_point_is_the_mle(driven_ou_mle, finish):
    """EM's estimate of F, L, u, R, mu1, B, D (H, P1 held) is the maximiser found by BFGS."""
    theta_ref, ll_ref = driven_ou_mle
    _, y, times, v = _driven_ou()
    options = dict(finish="certify", accelerate=False, tol=1e-9, num_iters=20000)
    if finish == "polish":
        options = dict(finish="polish")
    fit = sdessm.fit_em(
        _ou_start(), y, times, inputs=v, fixed=("H", "P1"), progress=False, **options
    )
    if finish == "polish":
        assert fit.converged, fit.report.get("convergence")
    assert abs(fit.log_likelihood - ll_ref) < 1e-3
    ll = float(sdessm.log_likelihood(fit.sde, y, times, inputs=v))
    assert abs(fit.log_likelihood - ll) < 1e-8
    theta = _ou_theta(fit.sde)
    np.testing.assert_allclose(theta, theta_ref, rtol=1e-2, atol=1e-3)


# --------------------------------------------------------------------------- recovery


@pytest.mark.slow
def test_gains_recovered_within_standard_errors():
    """A 2-D driven model, T = 1000 with 10% missing: every entry of B and D lies within 4
    standard errors of the truth."""
    rng = np.random.default_rng(3)
    T, dt = 1000, 0.5
    true = sdessm.SDEParams(
        F=jnp.array([[-0.5, 0.3], [-0.4, -0.3]]),
        L=0.5 * jnp.eye(2),
        H=jnp.eye(2),
        u=jnp.array([0.1, -0.2]),
        R=0.1 * jnp.eye(2),
        mu1=jnp.zeros(2),
        P1=jnp.eye(2),
        B=jnp.array([[1.0], [0.5]]),
        D=jnp.array([[0.3], [-0.2]]),
    )
    v = np.sin(np.arange(T) * 0.3)[:, None] + (rng.random((T, 1)) > 0.7).astype(np.float64)
    times = np.arange(T) * dt
    _, y = sdessm.simulate(jax.random.key(1), true, times, inputs=v)
    y = np.array(y)
    y[rng.random(y.shape) < 0.1] = np.nan
    start = true._replace(
        F=-jnp.eye(2), L=jnp.eye(2), u=jnp.zeros(2), R=jnp.eye(2),
        B=jnp.zeros((2, 1)), D=jnp.zeros((2, 1)),
    )  # fmt: skip
    fit = sdessm.fit_em(start, y, times, inputs=v, fixed=("H", "P1"), progress=False)
    assert fit.converged, fit.report.get("convergence")
    se = fit.standard_errors()
    for name in ("B", "D"):
        est, truth = np.asarray(getattr(fit.sde, name)), np.asarray(getattr(true, name))
        assert se[name].shape == truth.shape
        assert np.all(se[name] > 0)
        z = np.abs(est - truth) / se[name]
        assert np.all(z < 4.0), (name, est, truth, se[name])


# --------------------------------------------------------------------------- discrete fit


def test_discrete_fit_with_gains(key):
    """An `LGSSMParams` start with B and D: the fit's log-likelihood is that of its parameters
    and at least that of the truth (which the free fields can reach)."""
    T, m = 300, 1
    rng = np.random.default_rng(5)
    true = sdessm.LGSSMParams(
        A=jnp.array([[0.8, 0.2], [-0.1, 0.7]]),
        Sigma=jnp.array([[0.3, 0.05], [0.05, 0.2]]),
        H=jnp.eye(2),
        u=jnp.array([0.5, -0.2]),
        R=jnp.array([[0.1, 0.02], [0.02, 0.15]]),
        mu1=jnp.zeros(2),
        P1=jnp.eye(2),
        B=jnp.array([[0.6], [-0.4]]),
        D=jnp.array([[0.3], [0.1]]),
    )
    v = rng.normal(size=(T, m))
    _, y = sdessm.simulate(key, true, num_timesteps=T, inputs=v)
    y = np.array(y)
    start = true._replace(
        A=0.5 * jnp.eye(2), Sigma=jnp.eye(2), u=jnp.zeros(2), R=jnp.eye(2),
        B=jnp.zeros((2, m)), D=jnp.zeros((2, m)),
    )  # fmt: skip
    fit = sdessm.fit_em(start, y, inputs=v, fixed=("H", "P1"), finish="certify", progress=False)
    assert isinstance(fit.params, sdessm.LGSSMParams)
    assert fit.params.B.shape == (2, m) and fit.params.D.shape == (2, m)
    assert fit.converged, fit.report.get("convergence")
    ll_fit = float(sdessm.log_likelihood(fit.params, y, inputs=v))
    assert abs(fit.log_likelihood - ll_fit) < 1e-8
    assert ll_fit >= float(sdessm.log_likelihood(true, y, inputs=v)) - 1e-6


# --------------------------------------------------------------------------- sequences


def _ou_sequences(shared: bool):
    T, dt, n = 80, 0.5, 3
    rng = np.random.default_rng(7)
    true, _, _, _ = _driven_ou()
    times = np.arange(T) * dt
    v = rng.normal(size=(T, 1)) if shared else rng.normal(size=(n, T, 1))
    _, y = sdessm.simulate(jax.random.key(2), true, times, n, inputs=v)
    return np.array(y), times, v


@pytest.mark.parametrize("shared", [False, True])
def test_several_sequences(shared):
    """y (3, T, p) with inputs per sequence (3, T, m) or shared (T, m): the final
    log-likelihood is the sum of the sequences' `log_likelihood`."""
    y, times, v = _ou_sequences(shared)
    fit = sdessm.fit_em(
        _ou_start(), y, times, inputs=v, fixed=("H", "P1"), finish="none", num_iters=40,
        progress=False,
    )  # fmt: skip
    assert np.all(np.diff(fit.log_likelihoods) > -1e-9)
    per_sequence = [
        float(sdessm.log_likelihood(fit.sde, y[i], times, inputs=v if shared else v[i]))
        for i in range(y.shape[0])
    ]
    np.testing.assert_allclose(fit.log_likelihood, sum(per_sequence), rtol=1e-10)


# --------------------------------------------------------------------------- errors


def _tiny():
    T = 20
    rng = np.random.default_rng(11)
    y, v = rng.normal(size=(T, 1)), rng.normal(size=(T, 1))
    plain = _ou_start()._replace(B=None, D=None)
    return plain, _ou_start(), y, np.arange(T) * 0.5, v


def test_inputs_without_gains_refused():
    plain, _, y, times, v = _tiny()
    with pytest.raises(ValueError, match="inputs"):
        sdessm.fit_em(plain, y, times, inputs=v, fixed=("H", "P1"), progress=False)


def test_gains_without_inputs_refused():
    _, gains, y, times, _ = _tiny()
    with pytest.raises(ValueError, match="inputs"):
        sdessm.fit_em(gains, y, times, fixed=("H", "P1"), progress=False)
    with pytest.raises(ValueError, match="inputs"):
        sdessm.fit_em(gains._replace(B=None), y, times, fixed=("H", "P1"), progress=False)


def test_gains_with_map_or_per_step_emissions_refused():
    """MAP over an `SDEParams` (`log_prior` without `structure`) and per-step emissions do not
    fit input gains."""
    _, gains, y, times, v = _tiny()
    with pytest.raises(NotImplementedError, match="input gains"):
        sdessm.fit_em(gains, y, times, inputs=v, log_prior=lambda s: 0.0, progress=False)
    ys = np.stack([y] * 3)
    with pytest.raises(NotImplementedError, match="per_step"):
        sdessm.fit_em(
            gains, ys, times, inputs=v, emissions="per_step", fixed=("H",), progress=False
        )


# --------------------------------------------------------------------------- zero gains


def test_zero_gains_held_equal_the_fit_without_gains(rng):
    """B = D = 0 held fixed: EM with inputs runs iterate for iterate as EM without gains."""
    T, d, p = 120, 2, 2
    truth = _lgssm(rng, d, p, 1)._replace(B=None, D=None, H=jnp.eye(2))
    _, y = sdessm.simulate(jax.random.key(4), truth, num_timesteps=T)
    y = np.array(y)
    y[rng.random(y.shape) < 0.1] = np.nan
    v = rng.normal(size=(T, 1))
    start = truth._replace(A=0.5 * jnp.eye(d), Sigma=jnp.eye(d), u=jnp.zeros(p), R=jnp.eye(p))
    options = dict(finish="none", accelerate=False, num_iters=60, tol=0.0, progress=False)
    with_gains = sdessm.fit_em(
        start._replace(B=jnp.zeros((d, 1)), D=jnp.zeros((p, 1))), y, inputs=v,
        fixed=("B", "D", "H", "P1"), **options,
    )  # fmt: skip
    without = sdessm.fit_em(start, y, fixed=("H", "P1"), **options)
    np.testing.assert_allclose(with_gains.log_likelihoods, without.log_likelihoods, rtol=1e-10)
    for name in ("A", "Sigma", "H", "u", "R", "mu1", "P1"):
        _close(getattr(with_gains.params, name), getattr(without.params, name), 1e-8, 1e-10)
    np.testing.assert_array_equal(with_gains.params.B, 0.0)
    np.testing.assert_array_equal(with_gains.params.D, 0.0)


# --------------------------------------------------------------------------- numerical path


def _bfgs(y, times, v, held=None):
    """BFGS on the exact log-likelihood of the driven OU over theta (`_ou_params`), with the
    entries `held` ({index: value}) kept fixed; returns (theta, log-likelihood)."""
    held = held or {}
    free = np.array([i for i in range(7) if i not in held])

    def full(th):
        theta = jnp.zeros(7).at[free].set(th)
        for i, value in held.items():
            theta = theta.at[i].set(value)
        return theta

    loss = jax.jit(
        jax.value_and_grad(
            lambda th: -sdessm.log_likelihood(_ou_params(full(th)), y, times, inputs=v)
        )
    )
    fun = lambda th: tuple(np.asarray(a, dtype=float) for a in loss(jnp.asarray(th)))  # noqa: E731
    start = np.array([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])[free]
    res = scipy.optimize.minimize(fun, start, jac=True, method="BFGS", options={"gtol": 1e-8})
    return np.asarray(full(jnp.asarray(res.x))), -res.fun


@pytest.mark.parametrize("case", ["irregular", "held B"])
def test_numerical_transitions_with_gains_reach_the_mle(case):
    """Irregular steps, or B held while F moves (no closed form for either): EM's estimate is
    the maximiser found by BFGS on the exact log-likelihood."""
    true, y, times, v = _driven_ou()
    T = 150
    y, times, v = y[:T], times[:T], v[:T]
    held, fixed, start = None, ("H", "P1"), _ou_start()
    if case == "irregular":
        rng = np.random.default_rng(13)
        times = np.concatenate([[0.0], np.cumsum(np.where(rng.random(T - 1) < 0.5, 0.4, 0.7))])
        _, y = sdessm.simulate(jax.random.key(3), true, times, inputs=v)
        y = np.array(y)
    else:
        held, fixed, start = {5: 0.8}, ("H", "P1", "B"), start._replace(B=jnp.array([[0.8]]))
    fit = sdessm.fit_em(
        start, y, times, inputs=v, fixed=fixed, finish="none", tol=1e-9, progress=False
    )
    assert fit.report["path"] == "numerical transitions"
    theta_ref, ll_ref = _bfgs(y, times, v, held)
    assert abs(fit.log_likelihood - ll_ref) < 1e-3
    _close(fit.log_likelihood, sdessm.log_likelihood(fit.sde, y, times, inputs=v), 1e-10, 0.0)
    np.testing.assert_allclose(_ou_theta(fit.sde), theta_ref, rtol=1e-2, atol=1e-3)
    if case == "held B":
        np.testing.assert_array_equal(fit.sde.B, start.B)


# --------------------------------------------------------------------------- a NumPyro model


def test_zoo_driven_model_em_reaches_the_mle():
    """The zoo's driven OU fitted by EM over its named sites (the structured path: a numerical
    M-step through the augmented exponential) reaches the maximum that SciPy's BFGS finds on
    the exact log-likelihood of the same named parameters."""
    from sdessm.models import load

    module = load("driven_ou")
    _, y, times, v = _driven_ou()
    fit = sdessm.fit_em(module.model, y, times, model_kwargs={"inputs": v}, progress=False)
    assert fit.converged, fit.report.get("convergence")

    def sde(z):  # theta, sigma, noise through logs
        return module.to_sde(jnp.exp(z[0]), jnp.exp(z[1]), z[2], jnp.exp(z[3]), z[4:5], z[5:6])

    loss = jax.jit(jax.value_and_grad(lambda z: -sdessm.log_likelihood(sde(z), y, times, inputs=v)))
    fun = lambda z: tuple(np.asarray(a, dtype=float) for a in loss(jnp.asarray(z)))  # noqa: E731
    start = np.array([np.log(0.3), 0.0, 0.0, 0.0, 0.0, 0.0])
    ref = scipy.optimize.minimize(fun, start, jac=True, method="BFGS", options={"gtol": 1e-8})
    assert abs(fit.log_likelihood + ref.fun) < 1e-3
    p = fit.params
    got = [np.log(p["theta"]), np.log(p["sigma"]), p["u"], np.log(p["noise"]), p["b"][0], p["d"][0]]
    np.testing.assert_allclose(np.asarray(got, dtype=float), ref.x, rtol=1e-2, atol=1e-3)


def test_posterior_forecast_of_a_driven_model_follows_the_future_inputs():
    """`forecast_posterior` with the future inputs: its paths at one parameter value average to
    the exact forecast of that value (Monte Carlo, 4000 paths); without them it is refused."""
    from sdessm.models import load

    module = load("driven_ou")
    _, y, times, v = _driven_ou()
    values = {"theta": 0.5, "sigma": 0.6, "b": [1.2], "d": [0.4], "u": 0.3, "noise": 0.45}
    draws = {
        k: np.repeat(np.asarray(x, dtype=float)[None], 4000, axis=0) for k, x in values.items()
    }
    future = times[-1] + 0.5 * np.arange(1, 6)
    future_v = np.array([[1.0], [1.0], [0.0], [0.0], [2.0]])
    paths = sdessm.forecast_posterior(
        module.model, draws, y, times, future, model_kwargs={"inputs": v}, future_inputs=future_v
    )
    exact = sdessm.forecast(
        module.to_sde(**values), y, times, future, inputs=v, future_inputs=future_v
    )
    obs = np.asarray(paths.obs_draws)[:, :, 0]
    sd = np.sqrt(np.asarray(exact.obs_covs)[:, 0, 0])
    assert np.all(np.abs(obs.mean(axis=0) - np.asarray(exact.obs_means)[:, 0]) < 4 * sd / 63)
    np.testing.assert_allclose(obs.std(axis=0), sd, rtol=0.1)
    with pytest.raises(ValueError, match="future_inputs"):
        sdessm.forecast_posterior(module.model, draws, y, times, future, model_kwargs={"inputs": v})
