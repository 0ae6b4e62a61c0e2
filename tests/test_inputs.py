"""Known inputs (controls) v_k, held constant between observation times (zero-order hold):

    dx = (F x + B v(t)) dt + L dW,   y_k = H x_k + D v_k + u + r_k,

whose exact discrete model is x_{k+1} = A_k x_k + B_k v_k + q_k with B_k the top-right block of
expm([[F, B], [0, 0]] h_k). References: the dense joint Gaussian of all states and observations
(its mean from the deterministic recursion with the inputs), SciPy's matrix exponential, closed
forms (OU, random walk), statsmodels' Kalman filter, Monte Carlo and finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from reference import quadrature_sigma, random_driven_problem

import sdessm

RTOL, ATOL = 1e-9, 1e-11


# --------------------------------------------------------------------------- references


def _input_block(F, B, h):
    """B_k = int_0^h e^{F s} ds B: the top-right block of expm([[F, B], [0, 0]] h)."""
    d, m = B.shape
    M = np.zeros((d + m, d + m))
    M[:d, :d], M[:d, d:] = F, B
    return scipy.linalg.expm(M * h)[:d, d:]


def _discrete(F, L, B, times):
    """Per-step (A, Sigma, B_k) of the SDE on `times`: SciPy expm and quadrature."""
    steps = np.diff(times)
    A = np.stack([scipy.linalg.expm(F * h) for h in steps])
    Sigma = np.stack([quadrature_sigma(F, L @ L.T, h) for h in steps])
    Bk = np.stack([_input_block(F, B, h) for h in steps])
    return A, Sigma, Bk


def _response(A, Bk, v):
    """The deterministic response s_1 = 0, s_{k+1} = A_k s_k + B_k v_k, (T, d)."""
    s = [np.zeros(A.shape[-1])]
    for k in range(len(A)):
        s.append(A[k] @ s[-1] + Bk[k] @ v[k])
    return np.stack(s)


def _dense(model, v, y, upto=None):
    """Condition the joint Gaussian of (x_1..x_T, y_1..y_T) on the observed entries of y[:upto].

    `model` is a dict of per-step arrays A, Sigma, Bk (T-1 leading), D (T leading) and shared
    H, u, R, mu1, P1. Returns (x means (T, d), x cov blocks (T, T, d, d), y means (T, p),
    y cov blocks (T, T, p, p), log-likelihood of the conditioned entries).
    """
    A, Sigma, Bk, D = model["A"], model["Sigma"], model["Bk"], model["D"]
    H, u, R, mu1, P1 = (model[k] for k in ("H", "u", "R", "mu1", "P1"))
    y = np.asarray(y, dtype=np.float64)
    T, p = y.shape
    d = len(mu1)
    # mean: the deterministic recursion with the inputs
    mx = [mu1]
    for k in range(T - 1):
        mx.append(A[k] @ mx[-1] + Bk[k] @ v[k])
    mx = np.stack(mx)
    my = mx @ H.T + u + np.einsum("kpm,km->kp", D, v)
    # covariance: X = G [x_1; q_1; ...; q_{T-1}]
    G = np.zeros((T * d, T * d))
    for k in range(T):
        for j in range(k + 1):
            Phi = np.eye(d)
            for i in range(j, k):
                Phi = A[i] @ Phi
            G[k * d : (k + 1) * d, j * d : (j + 1) * d] = Phi
    cov_x = G @ scipy.linalg.block_diag(P1, *Sigma) @ G.T
    Hb = scipy.linalg.block_diag(*([H] * T))
    cov_xy = cov_x @ Hb.T
    cov_y = Hb @ cov_xy + scipy.linalg.block_diag(*([R] * T))
    mean = np.concatenate([mx.ravel(), my.ravel()])
    cov = np.block([[cov_x, cov_xy], [cov_xy.T, cov_y]])
    flat = y.ravel()
    obs = ~np.isnan(flat)
    if upto is not None:
        obs[upto * p :] = False
    idx = np.flatnonzero(obs)
    loglik = 0.0
    if idx.size:
        C = cov_y[np.ix_(idx, idx)]
        loglik = float(scipy.stats.multivariate_normal(my.ravel()[idx], C).logpdf(flat[idx]))
        rows = T * d + idx
        K = np.linalg.solve(C, cov[rows, :]).T
        mean = mean + K @ (flat[idx] - mean[rows])
        cov = cov - K @ cov[rows, :]
    xm, ym = mean[: T * d].reshape(T, d), mean[T * d :].reshape(T, p)
    xc = cov[: T * d, : T * d].reshape(T, d, T, d).transpose(0, 2, 1, 3)
    yc = cov[T * d :, T * d :].reshape(T, p, T, p).transpose(0, 2, 1, 3)
    return xm, xc, ym, yc, loglik


def _dense_filter(model, v, y):
    """Filtered and predicted means/covariances: condition on y[:k+1] and on y[:k]."""
    fm, fc, pm, pc = [], [], [], []
    for k in range(len(y)):
        xm, xc, *_ = _dense(model, v, y, upto=k + 1)
        fm.append(xm[k])
        fc.append(xc[k, k])
        xm, xc, *_ = _dense(model, v, y, upto=k)
        pm.append(xm[k])
        pc.append(xc[k, k])
    return np.stack(fm), np.stack(fc), np.stack(pm), np.stack(pc)


def _diag_blocks(blocks):
    return np.stack([blocks[k, k] for k in range(len(blocks))])


def _model(sde, times):
    """The dense reference's per-step arrays on `times`."""
    T = len(times)
    A, Sigma, Bk = _discrete(sde["F"], sde["L"], sde["B"], times)
    D = np.broadcast_to(sde["D"], (T, *sde["D"].shape))
    return dict(A=A, Sigma=Sigma, Bk=Bk, D=D, **{k: sde[k] for k in ("H", "u", "R", "mu1", "P1")})


def _lgssm(model, per_step_D=False):
    D = model["D"] if per_step_D else model["D"][0]
    return sdessm.LGSSMParams(
        model["A"],
        model["Sigma"],
        model["H"],
        model["u"],
        model["R"],
        model["mu1"],
        model["P1"],
        B=model["Bk"],
        D=D,
    )


def _close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol)


def _with_gaps(y):
    y = np.array(y, dtype=np.float64)
    y[1, 1] = np.nan  # a partly missing row
    y[3] = np.nan  # a wholly missing row
    return y


# --------------------------------------------------------------------------- 1. dense Gaussian


@pytest.mark.parametrize("form", ["sde", "lgssm", "lgssm_per_step_D"])
def test_filter_smoother_loglik_match_dense_gaussian(rng, form):
    sde, times, v, y = random_driven_problem(rng)
    y = _with_gaps(y)
    model = _model(sde, times)
    if form == "lgssm_per_step_D":  # a genuinely time-varying D_k
        model["D"] = rng.normal(size=model["D"].shape)
    if form == "sde":
        params, args = sdessm.SDEParams(**sde), (times,)
    else:
        params, args = _lgssm(model, per_step_D=form == "lgssm_per_step_D"), ()
    xm, xc, _, _, loglik = _dense(model, v, y)
    fm, fc, pm, pc = _dense_filter(model, v, y)

    _close(sdessm.log_likelihood(params, y, *args, inputs=v), loglik)
    filt = sdessm.kalman_filter(params, y, *args, inputs=v)
    _close(filt.log_likelihood, loglik)
    _close(filt.filtered_means, fm)
    _close(filt.filtered_covs, fc)
    _close(filt.predicted_means, pm)
    _close(filt.predicted_covs, pc)
    smooth = sdessm.rts_smoother(params, y, *args, inputs=v)
    _close(smooth.log_likelihood, loglik)
    _close(smooth.smoothed_means, xm)
    _close(smooth.smoothed_covs, _diag_blocks(xc))
    _close(smooth.cross_covs, np.stack([xc[k + 1, k] for k in range(len(y) - 1)]))

    # the parallel (associative scan) method gives the same numbers
    par_f = sdessm.kalman_filter(params, y, *args, inputs=v, method="parallel")
    par_s = sdessm.rts_smoother(params, y, *args, inputs=v, method="parallel")
    par_l = sdessm.log_likelihood(params, y, *args, inputs=v, method="parallel")
    for got, want in zip(par_f, filt, strict=True):
        _close(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    for got, want in zip(par_s, smooth, strict=True):
        _close(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    _close(par_l, loglik)


def test_discretize_gives_the_input_matrix(rng):
    sde, times, _, _ = random_driven_problem(rng)
    params = sdessm.SDEParams(**sde)
    lg = params.discretize(times)
    _, _, Bk = _discrete(sde["F"], sde["L"], sde["B"], times)
    assert lg.B.shape == Bk.shape == (5, 2, 2)
    _close(lg.B, Bk, rtol=1e-12, atol=1e-14)
    _close(lg.D, sde["D"], rtol=0, atol=0)
    same = sdessm.discretize_params(params, times)
    _close(same.B, Bk, rtol=1e-12, atol=1e-14)
    # uniform steps: one shared (d, m) B
    uniform = params.discretize(dt=0.4)
    assert uniform.B.shape == (2, 2)
    _close(uniform.B, _input_block(sde["F"], sde["B"], 0.4), rtol=1e-12, atol=1e-14)
    grid = 0.3 + 0.4 * np.arange(5, dtype=np.float64)
    assert params.discretize(grid).B.shape == (2, 2)


# --------------------------------------------------------------------------- 2. sequences


def test_several_sequences_shared_and_own_inputs(rng):
    sde, times, v, _ = random_driven_problem(rng)
    params = sdessm.SDEParams(**sde)
    T, p, m = len(times), 2, 2
    ys = rng.normal(size=(3, T, p)) * 2.0
    ys[0, 2, 0] = np.nan
    ys[1, 4:] = np.nan  # padding
    vs = rng.normal(size=(3, T, m))
    shared = sdessm.log_likelihood(params, ys, times, inputs=v)
    own = sdessm.log_likelihood(params, ys, times, inputs=vs)
    filt = sdessm.kalman_filter(params, ys, times, inputs=vs)
    smooth = sdessm.rts_smoother(params, ys, times, inputs=vs)
    assert shared.shape == own.shape == (3,)
    assert filt.filtered_means.shape == smooth.smoothed_means.shape == (3, T, 2)
    for b in range(3):
        one = sdessm.log_likelihood(params, ys[b], times, inputs=v)
        _close(shared[b], np.asarray(one), rtol=1e-12)
        one_f = sdessm.kalman_filter(params, ys[b], times, inputs=vs[b])
        _close(own[b], np.asarray(one_f.log_likelihood), rtol=1e-12)
        _close(filt.filtered_means[b], np.asarray(one_f.filtered_means), rtol=1e-12, atol=1e-13)
    # the batched smoother with per-sequence inputs against the dense Gaussian of each sequence
    model = _model(sde, times)
    for b in range(3):
        xm, _, _, _, loglik = _dense(model, vs[b], ys[b])
        _close(smooth.smoothed_means[b], xm)
        _close(smooth.log_likelihood[b], loglik)
    # one time grid per sequence
    grids = np.stack([times, times * 1.5, times + 0.2])
    per_grid = sdessm.log_likelihood(params, ys, grids, inputs=vs)
    for b in range(3):
        one = sdessm.log_likelihood(params, ys[b], grids[b], inputs=vs[b])
        _close(per_grid[b], np.asarray(one), rtol=1e-12)


# --------------------------------------------------------------------------- 3., 4. closed forms


THETA, SIGMA, GAIN, LEVEL = 0.7, 0.5, 1.3, 2.0


def _ou_with_input():
    """dx = (-theta x + b v) dt + sigma dW, started in its stationary law under v = c."""
    return sdessm.SDEParams(
        F=np.array([[-THETA]]),
        L=np.array([[SIGMA]]),
        H=np.eye(1),
        u=np.zeros(1),
        R=np.array([[0.1]]),
        mu1=np.array([GAIN * LEVEL / THETA]),
        P1=np.array([[SIGMA**2 / (2 * THETA)]]),
        B=np.array([[GAIN]]),
    )


def test_ou_with_constant_input_stays_at_its_stationary_mean(rng, key):
    params = _ou_with_input()
    T = 40
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.05, 1.0, size=T - 1))])
    v = np.full((T, 1), LEVEL)
    mean, var = GAIN * LEVEL / THETA, SIGMA**2 / (2 * THETA)
    filt = sdessm.kalman_filter(params, np.full((T, 1), np.nan), times, inputs=v)
    _close(filt.predicted_means, np.full((T, 1), mean), rtol=1e-10, atol=0)
    _close(filt.filtered_means, np.full((T, 1), mean), rtol=1e-10, atol=0)
    _close(filt.predicted_covs, np.full((T, 1, 1), var), rtol=1e-10, atol=0)
    assert float(filt.log_likelihood) == 0.0
    # closed-form discrete input matrix
    h = np.diff(times)
    _close(params.discretize(times).B[:, 0, 0], GAIN * (1 - np.exp(-THETA * h)) / THETA, 1e-12)
    # Monte Carlo: the sample mean of x at every time is the stationary mean
    N = 2000
    x, _ = sdessm.simulate(key, params, times, N, inputs=v)
    x = np.asarray(x)
    assert x.shape == (N, T, 1)
    se = np.sqrt(var / N)
    assert np.all(np.abs(x.mean(0)[:, 0] - mean) < 4 * se), np.abs(x.mean(0)[:, 0] - mean) / se


def test_random_walk_with_drift_input(rng):
    """F = 0: B_k = B h_k exactly, and the mean of x moves by B v_k h_k per step."""
    d, m, T = 2, 3, 7
    B = rng.normal(size=(d, m))
    params = sdessm.SDEParams(
        F=np.zeros((d, d)),
        L=0.5 * np.eye(d),
        H=np.eye(d),
        u=np.zeros(d),
        R=np.eye(d),
        mu1=np.zeros(d),
        P1=np.eye(d),
        B=B,
    )
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.1, 2.0, size=T - 1))])
    h = np.diff(times)
    lg = params.discretize(times)
    _close(lg.B, B[None] * h[:, None, None], rtol=1e-13, atol=1e-15)
    _close(lg.A, np.broadcast_to(np.eye(d), (T - 1, d, d)), rtol=0, atol=1e-15)
    _close(params.discretize(dt=0.25).B, 0.25 * B, rtol=1e-13, atol=1e-15)
    v = rng.normal(size=(T, m))
    filt = sdessm.kalman_filter(params, np.full((T, d), np.nan), times, inputs=v)
    drift = np.concatenate([np.zeros((1, d)), np.cumsum((v[:-1] @ B.T) * h[:, None], axis=0)])
    _close(filt.predicted_means, drift, rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- 5. statsmodels


@pytest.mark.parametrize("missing", [False, True])
def test_matches_statsmodels_kalman_filter(rng, missing):
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.statespace.kalman_filter import KalmanFilter

    T, d, p, m, dt = 25, 2, 2, 2, 0.3
    sde, times, v, y = random_driven_problem(rng, T, d, p, m, irregular=False)
    if missing:
        y = _with_gaps(y)
        y[10:12, 0] = np.nan
    A = scipy.linalg.expm(sde["F"] * dt)
    Sigma = quadrature_sigma(sde["F"], sde["L"] @ sde["L"].T, dt)
    Bk = _input_block(sde["F"], sde["B"], dt)
    H, u, R, D = sde["H"], sde["u"], sde["R"], sde["D"]

    kf = KalmanFilter(k_endog=p, k_states=d, k_posdef=d)
    kf.bind(np.array(y))
    kf["design"] = H
    kf["obs_intercept"] = np.ascontiguousarray((u[None, :] + v @ D.T).T)  # (p, nobs)
    kf["obs_cov"] = R
    kf["transition"] = A
    # alpha_{t+1} = T alpha_t + c_t + ...: column k of c is B v_k, our timing
    kf["state_intercept"] = np.ascontiguousarray((v @ Bk.T).T)  # (d, nobs)
    kf["selection"] = np.eye(d)
    kf["state_cov"] = Sigma
    kf.initialize_known(sde["mu1"], sde["P1"])
    res = kf.filter()
    peer_loglik = float(np.sum(res.llf_obs))
    peer_means = np.asarray(res.filtered_state).T

    lg = sdessm.LGSSMParams(A, Sigma, H, u, R, sde["mu1"], sde["P1"], B=Bk, D=D)
    for params, args in [(lg, {}), (sdessm.SDEParams(**sde), dict(dt=dt))]:
        filt = sdessm.kalman_filter(params, y, inputs=v, **args)
        _close(filt.log_likelihood, peer_loglik, rtol=1e-8, atol=0)
        _close(filt.filtered_means, peer_means, rtol=1e-8, atol=1e-10)
        _close(sdessm.log_likelihood(params, y, inputs=v, **args), peer_loglik, 1e-8, 0)


# --------------------------------------------------------------------------- 6. simulation


def test_simulation_moments_and_deterministic_response(rng, key):
    T, d, p, m = 6, 2, 2, 1
    sde, times, v, _ = random_driven_problem(rng, T, d, p, m)
    params = sdessm.SDEParams(**sde)
    model = _model(sde, times)
    mx = [sde["mu1"]]
    for k in range(T - 1):
        mx.append(model["A"][k] @ mx[-1] + model["Bk"][k] @ v[k])
    y_mean = np.stack(mx) @ sde["H"].T + v @ sde["D"].T + sde["u"]
    N = 4000
    x, y = sdessm.simulate(key, params, times, N, inputs=v)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (N, T, d) and y.shape == (N, T, p)
    se = y.std(0, ddof=1) / np.sqrt(N)
    z = np.abs(y.mean(0) - y_mean) / se
    assert np.all(z < 5), z

    # same key: the draw with inputs is the draw without plus the deterministic response
    free = params._replace(B=None, D=None)
    x0, y0 = (np.asarray(a) for a in sdessm.simulate(key, free, times, N))
    s = _response(model["A"], model["Bk"], v)
    np.testing.assert_allclose(x - x0, np.broadcast_to(s, x.shape), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        y - y0, np.broadcast_to(s @ sde["H"].T + v @ sde["D"].T, y.shape), rtol=0, atol=1e-12
    )

    # per-sequence inputs: each sequence gets its own response
    vs = rng.normal(size=(3, T, m))
    xs, ys = (np.asarray(a) for a in sdessm.simulate(key, params, times, 3, inputs=vs))
    xf, yf = (np.asarray(a) for a in sdessm.simulate(key, free, times, 3))
    for b in range(3):
        s = _response(model["A"], model["Bk"], vs[b])
        np.testing.assert_allclose(xs[b] - xf[b], s, rtol=0, atol=1e-12)
        want = s @ sde["H"].T + vs[b] @ sde["D"].T
        np.testing.assert_allclose(ys[b] - yf[b], want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- 7. forecast


@pytest.mark.parametrize("form", ["sde", "lgssm"])
def test_forecast_with_future_inputs_matches_dense_gaussian(rng, form):
    T, N, m = 6, 3, 2
    sde, times, v, y = random_driven_problem(rng, T, m=m, irregular=form == "sde")
    y = _with_gaps(y)
    w = rng.normal(size=(N, m)) * 1.5
    if form == "sde":
        future = times[-1] + np.cumsum(np.array([0.4, 0.3, 0.8]))
        params, args = sdessm.SDEParams(**sde), dict(times=times, future_times=future)
    else:
        future = times[-1] + 0.3 * np.arange(1, N + 1)
        lg = _model(sde, times[:2])  # one uniform step of 0.3
        params = sdessm.LGSSMParams(
            lg["A"][0], lg["Sigma"][0], *(sde[k] for k in ("H", "u", "R", "mu1", "P1")),
            B=lg["Bk"][0], D=sde["D"],
        )  # fmt: skip
        args = dict(num_steps=N)
    # the dense reference on the extended grid: future rows missing, inputs v then w (ZOH: the
    # step from t_T to the first future time uses v_T, the last past input)
    grid = np.concatenate([times, future])
    model = _model(sde, grid)
    y_ext = np.concatenate([y, np.full((N, 2), np.nan)])
    xm, xc, ym, yc, _ = _dense(model, np.concatenate([v, w]), y_ext)
    fc = sdessm.forecast(params, y, inputs=v, future_inputs=w, **args)
    _close(fc.state_means, xm[T:])
    _close(fc.state_covs, _diag_blocks(xc)[T:])
    _close(fc.obs_means, ym[T:])
    _close(fc.obs_covs, _diag_blocks(yc)[T:])
    with pytest.raises(ValueError, match="future_inputs"):
        sdessm.forecast(params, y, inputs=v, **args)


# --------------------------------------------------------------------------- 8. errors


def _errrandom_driven_problem():
    rng = np.random.default_rng(3)
    sde, times, v, y = random_driven_problem(rng, T=5, d=2, p=2, m=2)
    return sde, times, v, y


_SDE, _TIMES, _V, _Y = _errrandom_driven_problem()


def _with(**fields):
    return sdessm.SDEParams(**(_SDE | fields))


_SHAPE = r"`inputs`.*\(5, 2\)"  # names the argument and the shape expected


def _bad_at(row, col, value):
    v = _V.copy()
    v[row, col] = value
    return v


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sdessm.kalman_filter(_with(), _Y, _TIMES), "inputs"),
        (lambda: sdessm.log_likelihood(_with(D=None), _Y, _TIMES), "inputs"),
        (lambda: sdessm.rts_smoother(_with(B=None), _Y, _TIMES), "inputs"),
        (lambda: sdessm.simulate(jax.random.key(0), _with(), _TIMES, 2), "inputs"),
        (
            lambda: sdessm.kalman_filter(_with(B=None, D=None), _Y, _TIMES, inputs=_V),
            "inputs",
        ),
        (lambda: sdessm.kalman_filter(_with(), _Y, _TIMES, inputs=_V[:-1]), _SHAPE),
        (
            lambda: sdessm.kalman_filter(_with(), _Y, _TIMES, inputs=np.ones((5, 3))),
            _SHAPE,
        ),
        (lambda: sdessm.kalman_filter(_with(), _Y, _TIMES, inputs=_V[:, 0]), _SHAPE),
        (
            lambda: sdessm.log_likelihood(
                _with(), np.stack([_Y] * 3), _TIMES, inputs=np.stack([_V] * 2)
            ),
            _SHAPE,
        ),
        (
            lambda: sdessm.kalman_filter(_with(), _Y, _TIMES, inputs=_bad_at(3, 1, np.nan)),
            r"`inputs`.*row 3, column 1\b",
        ),
        (
            lambda: sdessm.log_likelihood(_with(), _Y, _TIMES, inputs=_bad_at(3, 1, np.inf)),
            r"`inputs`.*row 3, column 1\b",
        ),
        (
            lambda: sdessm.simulate(
                jax.random.key(0), _with(), _TIMES, 2, inputs=_bad_at(0, 0, np.nan)
            ),
            r"`inputs`.*row 0, column 0",
        ),
        (lambda: sdessm.kalman_filter(_with(B=np.ones((3, 2))), _Y, _TIMES, inputs=_V), "`B`"),
        (lambda: sdessm.kalman_filter(_with(D=np.ones((3, 2))), _Y, _TIMES, inputs=_V), "`D`"),
        (
            lambda: sdessm.kalman_filter(_with(D=np.ones((2, 3))), _Y, _TIMES, inputs=_V),
            "`[BD]`",
        ),
        (
            lambda: sdessm.kalman_filter(
                _with().discretize(_TIMES)._replace(B=np.ones((5, 3, 2))), _Y, inputs=_V
            ),
            "`B`",
        ),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_fit_em_needs_the_inputs_of_a_model_with_gains():
    """A start with gains and no inputs is refused, not fitted as if it had none."""
    with pytest.raises(ValueError, match="give the known `inputs`"):
        sdessm.fit_em(_with(), _Y, _TIMES, progress=False)
    with pytest.raises(ValueError, match="give the known `inputs`"):
        sdessm.fit_em(_with().discretize(_TIMES), _Y, progress=False)


# --------------------------------------------------------------------------- 9. input-free


def test_zero_gains_equal_the_input_free_model(rng):
    sde, times, v, y = random_driven_problem(rng, m=1)
    y = _with_gaps(y)
    core = {k: sde[k] for k in ("F", "L", "H", "u", "R", "mu1", "P1")}
    free = sdessm.SDEParams(*core.values())  # seven positional fields, as before
    assert free.B is None and free.D is None
    zero = free._replace(B=np.zeros((2, 1)), D=np.zeros((2, 1)))
    arbitrary = rng.normal(size=(len(times), 1)) * 10
    base = sdessm.log_likelihood(free, y, times)
    _close(sdessm.log_likelihood(zero, y, times, inputs=arbitrary), np.asarray(base), 1e-12, 0)
    a = sdessm.rts_smoother(free, y, times)
    b = sdessm.rts_smoother(zero, y, times, inputs=arbitrary)
    for got, want in zip(b, a, strict=True):
        _close(got, np.asarray(want), rtol=1e-12, atol=1e-14)
    assert free.discretize(times).B is None


# --------------------------------------------------------------------------- 10. gradient


def test_grad_wrt_input_gains_and_inputs_matches_finite_differences(rng):
    """Gradients in B (the continuous one), D and the inputs themselves (traced under jit)."""
    sde, times, v, y = random_driven_problem(rng, T=8)
    y = _with_gaps(y)
    params = sdessm.SDEParams(**{k: jnp.asarray(a) for k, a in sde.items()})

    def loglik(B, D, v):
        return sdessm.log_likelihood(params._replace(B=B, D=D), y, times, inputs=v)

    args = (params.B, params.D, jnp.asarray(v))
    grads = jax.grad(loglik, argnums=(0, 1, 2))(*args)
    jitted = jax.jit(loglik)
    _close(jitted(*args), np.asarray(loglik(*args)), rtol=1e-12)
    eps = 1e-6
    for i, (x, g) in enumerate(zip(args, grads, strict=True)):
        num = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            E = np.zeros(x.shape)
            E[idx] = eps
            up, down = [np.asarray(a) for a in args], [np.asarray(a) for a in args]
            up[i], down[i] = up[i] + E, down[i] - E
            num[idx] = (jitted(*up) - jitted(*down)) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)
