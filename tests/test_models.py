"""The model zoo: loading, the models' likelihood against dense Gaussian algebra, shipping."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.optimize
from numpyro import handlers
from numpyro.infer import Predictive
from reference import dense_smoother, quadrature_sigma, random_spd, random_stable_drift
from sdessm.models import available, load

import sdessm
from sdessm.discretize import stationary_covariance

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
    "carma",
    "damped_oscillator",
    "driven_ou",
    "local_level",
    "multivariate_ou",
    "ou",
    "trend_seasonal",
    "unconstrained",
]
# x_1 from the stationary law (of the undriven process for driven_ou; others: a fixed P1)
STATIONARY = ["carma", "damped_oscillator", "driven_ou", "ou"]
RTOL, ATOL = 1e-10, 1e-12


def test_available_and_load_by_name():
    zoo = available()
    assert sorted(zoo) == NAMES
    assert all(summary for summary in zoo.values())
    for name in NAMES:
        module = load(name)
        assert callable(module.model) and isinstance(module.TRUE_PARAMS, dict)


def test_load_errors_and_user_files(tmp_path):
    with pytest.raises(ValueError, match=re.escape("unknown model 'oscilator'; the zoo has")):
        load("oscilator")
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "missing.py")
    incomplete = tmp_path / "incomplete.py"
    incomplete.write_text("TRUE_PARAMS = {}\n")
    with pytest.raises(ValueError, match=r"does not define \['model'\]"):
        load(incomplete)
    fit_only = tmp_path / "fit_only.py"  # enough to fit and sample: simulating needs more
    fit_only.write_text("def model(times, y=None):\n    pass\n")
    assert callable(load(fit_only).model)
    broken = tmp_path / "broken.py"
    broken.write_text("import numpyro\nmodel = numpyro.no_such_thing\n")
    with pytest.raises(ValueError, match=r"model file .*broken.py failed to load: AttributeError"):
        load(broken)
    mine = tmp_path / "my_ou.py"
    mine.write_text((ROOT / "models" / "ou.py").read_text())
    assert load(mine).TRUE_PARAMS == load("ou").TRUE_PARAMS


def _model_inputs(module, times) -> dict:
    """The keyword arguments that feed a driven model its example inputs (none otherwise)."""
    if not hasattr(module, "example_inputs"):
        return {}
    return {"inputs": np.asarray(module.example_inputs(times), dtype=float)}


@pytest.mark.parametrize("name", NAMES)
def test_model_likelihood_is_the_dense_gaussian_marginal(name, key):
    module = load(name)
    times = np.sort(np.random.default_rng(1).uniform(0.0, 6.0, size=7))
    sde = module.to_sde(**module.TRUE_PARAMS)
    kwargs = _model_inputs(module, times)
    if kwargs:  # a step input early on, so that the example input is not constant here
        kwargs["inputs"] = kwargs["inputs"] + (np.arange(7) >= 2)[:, None]
    _, y = sdessm.simulate(key, sde, times, **kwargs)
    y = np.array(y)
    y[2, 0] = np.nan
    tr = handlers.trace(handlers.substitute(module.model, module.TRUE_PARAMS)).get_trace(
        jnp.asarray(times), y=jnp.asarray(y), **kwargs
    )
    got = float(tr["y"]["fn"].log_prob(tr["y"]["value"]))
    # reference: SciPy expm + quadrature for each step, then one dense Gaussian; known inputs
    # shift the mean of y by H s_k + D v_k, s_{k+1} = A_k s_k + B_k v_k from the exponential
    # of the state augmented with the (held) inputs
    F, Q = np.asarray(sde.F), np.asarray(sde.Q)
    steps = np.diff(times)
    A = np.stack([scipy.linalg.expm(F * s) for s in steps])
    Sigma = np.stack([quadrature_sigma(F, Q, s) for s in steps])
    arrays = (A, Sigma, *(np.asarray(a) for a in sde[2:7]))
    if kwargs:
        v, B = kwargs["inputs"], np.asarray(sde.B)
        d, m = B.shape
        aug = np.block([[F, B], [np.zeros((m, d + m))]])
        s = [np.zeros(d)]
        for k, h in enumerate(steps):
            E = scipy.linalg.expm(aug * h)
            s.append(E[:d, :d] @ s[-1] + E[:d, d:] @ v[k])
        y = y - np.stack(s) @ np.asarray(sde.H).T - v @ np.asarray(sde.D).T
    np.testing.assert_allclose(got, dense_smoother(arrays, y)[3], rtol=1e-8)


@pytest.mark.parametrize("name", STATIONARY)
def test_initial_state_is_stationary(name):
    sde = load(name).to_sde(**load(name).TRUE_PARAMS)
    F, Q = np.asarray(sde.F), np.asarray(sde.Q)
    stationary = scipy.linalg.solve_continuous_lyapunov(F, -Q)  # F P + P F^T + Q = 0
    np.testing.assert_allclose(sde.P1, stationary, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_prior_predictive(name, key):
    module = load(name)
    times = jnp.linspace(0.0, 10.0, 20)
    draws = Predictive(module.model, num_samples=3)(key, times, **_model_inputs(module, times))
    p = module.to_sde(**module.TRUE_PARAMS).obs_dim
    assert draws["y"].shape == (3, 20, p)
    assert np.all(np.isfinite(draws["y"]))


@pytest.mark.slow
def test_the_wheel_ships_the_zoo_and_the_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("sdessm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in NAMES + ["__init__"]:
        assert f"sdessm/models/{name}.py" in names
    for name in ("sunspots.csv", "nile.csv", "README.md"):
        assert f"sdessm/data/{name}" in names
    # a non-editable install (into its own folder, run from elsewhere) loads every zoo model
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    script = (
        "import sdessm, sdessm.models as m; print(sdessm.__file__); "
        "print(sorted(m.available())); [m.load(n).model for n in m.available()]; "
        "from sdessm import datasets; print(datasets.path('sunspots')); "
        "print(datasets.load('sunspots').shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(target)), out  # the installed copy, not the source tree
    assert out[1] == str(sorted(NAMES))
    assert out[2].startswith(str(target)) and out[3] == "(309, 2)", out  # the shipped data


# --- the stationary-law solver shared by the zoo -----------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_lyapunov_solver_matches_scipy(d, rng):
    F, Q = random_stable_drift(rng, d), random_spd(rng, d)
    got = stationary_covariance(jnp.asarray(F), jnp.asarray(Q))
    want = scipy.linalg.solve_continuous_lyapunov(F, -Q)  # F P + P F^T + Q = 0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * np.abs(want).max())
    np.testing.assert_allclose(jax.jit(stationary_covariance)(F, Q), got, rtol=RTOL, atol=ATOL)


def test_lyapunov_solver_gradient_matches_finite_differences(rng):
    d = 3
    F, Q, W = random_stable_drift(rng, d), random_spd(rng, d), rng.normal(size=(d, d))

    def scipy_loss(F, Q):  # the same functional, on SciPy's solution
        P = scipy.linalg.solve_continuous_lyapunov(F, -Q)
        return float(np.sum(W * 0.5 * (P + P.T)))

    def jax_loss(F, Q):
        return jnp.sum(jnp.asarray(W) * stationary_covariance(F, Q))

    grads = jax.grad(jax_loss, argnums=(0, 1))(jnp.asarray(F), jnp.asarray(Q))
    h = 1e-6
    for arg, grad in enumerate(grads):
        fd = np.zeros((d, d))
        for i, j in np.ndindex(d, d):
            step = np.zeros((d, d))
            step[i, j] = h
            plus = [F, Q]
            minus = [F, Q]
            plus[arg], minus[arg] = plus[arg] + step, minus[arg] - step
            fd[i, j] = (scipy_loss(*plus) - scipy_loss(*minus)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max())


# --- CARMA ---------------------------------------------------------------------------------------

ORDERS = [(1, 0), (2, 1), (3, 2), (4, 1)]


def carma_params(rng, p, q):
    """Random CARMA(p, q) parameters: under- and overdamped factors, zeta kept away from 1."""
    k = p // 2
    zeta = np.where(rng.uniform(size=k) < 0.5, rng.uniform(0.05, 0.9, k), rng.uniform(1.2, 3, k))
    params = {
        "omega": np.sort(rng.uniform(0.3, 3.0, k)),
        "zeta": zeta,
        "sigma": rng.uniform(0.5, 2.0),
        "b": rng.normal(size=q),
        "mu": rng.normal(),
        "noise": rng.uniform(0.1, 0.5),
    }
    if p % 2:
        params["lam"] = rng.uniform(0.2, 2.0)
    return params


def carma_factor_roots(omega=(), zeta=(), lam=None, **_):
    """Roots of the factors: -zeta w +- w sqrt(zeta^2 - 1) and -lam."""
    omega, zeta = np.asarray(omega, float), np.asarray(zeta, float)
    disc = omega * np.sqrt(zeta.astype(complex) ** 2 - 1)
    roots = np.concatenate([-zeta * omega + disc, -zeta * omega - disc])
    return roots if lam is None else np.append(roots, -lam)


def carma_frequency_response(w, omega=(), zeta=(), lam=None, b=(), **_):
    """a(i w) and b(i w), evaluated factor by factor (no companion matrix)."""
    s = 1j * w
    a = np.prod([s**2 + 2 * z * o * s + o**2 for o, z in zip(omega, zeta, strict=True)])
    a = a * (s + lam) if lam is not None else a
    return a, 1 + sum(bj * s ** (j + 1) for j, bj in enumerate(b))


def prior_draws(model, key, num, times, y, **kwargs):
    """Prior draws of the parameter sites (y observed, so nothing is simulated)."""

    def one(k):
        tr = handlers.trace(handlers.seed(model, k)).get_trace(times, y=y, **kwargs)
        return {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and n != "y"}

    return jax.vmap(one)(jax.random.split(key, num))


@pytest.mark.parametrize("p, q", ORDERS)
def test_carma_prior_draws_are_stationary(p, q, key):
    carma = load("carma")
    draws = prior_draws(carma.model, key, 200, jnp.arange(2.0), jnp.zeros((2, 1)), p=p, q=q)
    sites = {"sigma", "mu", "noise"} | ({"b"} if q else set())
    sites |= ({"omega", "zeta"} if p > 1 else set()) | ({"lam"} if p % 2 else set())
    assert set(draws) == sites
    sdes = jax.vmap(lambda named: carma.to_sde(**named))(draws)
    assert sdes.F.shape == (200, p, p) and sdes.H.shape == (200, 1, p)
    assert np.all(np.linalg.eigvals(np.asarray(sdes.F)).real < 0)
    assert np.all(np.linalg.eigvalsh(np.asarray(sdes.P1)) > 0)
    if p > 3:
        assert np.all(np.diff(np.asarray(draws["omega"]), axis=-1) > 0)  # ordered: no relabelling


def test_carma_stationary_for_extreme_damping():
    carma = load("carma")
    for zeta in ([1e-3, 50.0], [20.0, 1e-2], [1.0, 1.0]):
        sde = carma.to_sde(omega=[0.2, 8.0], zeta=zeta, sigma=1.0, b=[0.3, -0.1], mu=0.0, noise=0.1)
        assert np.all(np.linalg.eigvals(np.asarray(sde.F)).real < 0)
        stationary = scipy.linalg.solve_continuous_lyapunov(np.asarray(sde.F), -np.asarray(sde.Q))
        np.testing.assert_allclose(sde.P1, stationary, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("p, q", ORDERS)
def test_carma_companion_roots_are_the_factor_roots(p, q, rng):
    carma = load("carma")
    for _ in range(5):
        params = carma_params(rng, p, q)
        F = np.asarray(carma.to_sde(**params).F)
        np.testing.assert_array_equal(F[:-1], np.eye(p, k=1)[:-1])  # companion: superdiagonal
        coefficients = np.concatenate([[1.0], -F[-1, ::-1]])  # s^p + a_{p-1} s^{p-1} + ... + a_0
        got, want = np.roots(coefficients), carma_factor_roots(**params)
        rows, cols = scipy.optimize.linear_sum_assignment(np.abs(got[:, None] - want[None, :]))
        np.testing.assert_allclose(got[rows], want[cols], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("p, q", ORDERS)
def test_carma_spectral_density_and_autocovariance(p, q, rng):
    carma = load("carma")
    params = carma_params(rng, p, q)
    sde = carma.to_sde(**params)
    F, L, H = (np.asarray(a) for a in (sde.F, sde.L, sde.H))

    def spectrum(w):  # from the polynomials, factor by factor
        a, b = carma_frequency_response(w, **params)
        return params["sigma"] ** 2 * abs(b) ** 2 / abs(a) ** 2 / (2 * np.pi)

    for w in (0.05, 0.6, 1.7, 9.0):  # from the state-space form
        G = H @ np.linalg.solve(1j * w * np.eye(p) - F, L)
        np.testing.assert_allclose(np.abs(G[0, 0]) ** 2 / (2 * np.pi), spectrum(w), rtol=1e-10)
    # the stationary autocovariance H expm(F tau) P1 H^T is the Fourier transform of the spectrum
    # (2 int_0^inf S(w) cos(w tau) dw: resonances by adaptive quadrature, the smooth tail by QAWF)
    cut = 20.0 * max(1.0, *params["omega"], params.get("lam", 0.0))
    for tau in (0.0, 0.8):
        acov = (H @ scipy.linalg.expm(F * tau) @ np.asarray(sde.P1) @ H.T)[0, 0]
        head = scipy.integrate.quad(
            lambda w, tau=tau: spectrum(w) * np.cos(w * tau),
            0.0,
            cut,
            points=params["omega"],
            limit=500,
            epsabs=0.0,
            epsrel=1e-12,
        )[0]
        tail_weight = dict(weight="cos", wvar=tau) if tau else {}
        tail = scipy.integrate.quad(spectrum, cut, np.inf, epsabs=1e-14, **tail_weight)[0]
        np.testing.assert_allclose(2 * (head + tail), acov, rtol=1e-8, atol=1e-12)


def test_carma_ma_root_reflection_leaves_the_likelihood_unchanged(rng):
    """The identifiability caveat of the docstring: b matters only through |b(i w)|^2."""
    carma = load("carma")
    times = jnp.linspace(0.0, 20.0, 60)
    y = jnp.asarray(rng.normal(size=(60, 1)))  # the likelihoods agree for any data
    base = {"omega": [0.7], "zeta": [0.3], "lam": 0.8, "sigma": 1.0, "mu": 0.3, "noise": 0.2}
    r1, r2 = -0.5, 2.0  # roots of b(s) = (1 - s / r1)(1 - s / r2)
    b = [-(1 / r1 + 1 / r2), 1 / (r1 * r2)]
    flipped = [1 / r1 - 1 / r2, -1 / (r1 * r2)]  # r1 -> -r1
    other = [b[0], -b[1]]  # not a reflection

    @jax.vmap
    def loglik(b):
        return sdessm.kalman_filter(carma.to_sde(**base, b=b), y, times).log_likelihood

    ll = loglik(jnp.array([b, flipped, other]))
    np.testing.assert_allclose(ll[1], ll[0], rtol=1e-10)
    assert abs(ll[2] - ll[0]) > 1e-3  # not every change of b is invisible


def test_carma_jit_and_gradient():
    carma = load("carma")
    params = carma_params(np.random.default_rng(3), 3, 2)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    jax.tree.map(  # every field that is set (no input gains: None in both)
        lambda got, want: np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL),
        jax.jit(carma.to_sde)(**params),
        carma.to_sde(**params),
    )

    def var_y(omega):  # stationary variance of the noise-free output
        sde = carma.to_sde(**{**params, "omega": omega})
        return (sde.H @ sde.P1 @ sde.H.T)[0, 0]

    grad = jax.grad(var_y)(params["omega"])
    h = 1e-6
    fd = (var_y(params["omega"] + h) - var_y(params["omega"] - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_carma_order_errors():
    carma = load("carma")
    with pytest.raises(ValueError, match=r"length q < p = 2"):
        carma.to_sde(omega=[1.0], zeta=[0.1], sigma=1.0, b=[0.1, 0.2], mu=0.0, noise=0.1)
    with pytest.raises(ValueError, match="p >= 1"):
        carma.to_sde(sigma=1.0, mu=0.0, noise=0.1)
    with pytest.raises(ValueError, match="one length"):
        carma.to_sde(omega=[1.0, 2.0], zeta=[0.1], sigma=1.0, mu=0.0, noise=0.1)
    with pytest.raises(ValueError, match=r"got p = 2, q = 2"):
        carma.model(jnp.arange(3.0), p=2, q=2)


# --- the unconstrained model ---------------------------------------------------------------------


def unconstrained_params(rng, d, p):
    return {
        "F": random_stable_drift(rng, d),
        "L_diag": rng.uniform(0.2, 1.0, d),
        "L_offdiag": rng.normal(size=d * (d - 1) // 2),
        "H": rng.normal(size=(p, d)),
        "u": rng.normal(size=p),
        "noise": rng.uniform(0.1, 0.5, p),
    }


def assert_named_close(got, want):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("d, p", [(2, 1), (1, 1), (3, 2)])
def test_unconstrained_from_sde_inverts_to_sde(d, p, rng):
    unconstrained = load("unconstrained")
    named = unconstrained.TRUE_PARAMS if (d, p) == (2, 1) else unconstrained_params(rng, d, p)
    sde = unconstrained.to_sde(**named)
    assert sde.F.shape == (d, d) and sde.L.shape == (d, d) and sde.H.shape == (p, d)
    assert np.all(np.triu(np.asarray(sde.L), 1) == 0)
    assert_named_close(unconstrained.from_sde(sde), {"L_offdiag": np.zeros(0), **named})
    # any factor of the same Q (rotated, or wider) gives the same named parameters
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    wide = np.concatenate(
        [np.asarray(sde.L) @ rotation / np.sqrt(2), np.asarray(sde.L) / np.sqrt(2)], 1
    )
    for L in (np.asarray(sde.L) @ rotation, wide):
        got = unconstrained.from_sde(sde._replace(L=jnp.asarray(L)))
        assert_named_close(got, {"L_offdiag": np.zeros(0), **named})


def test_unconstrained_errors():
    unconstrained = load("unconstrained")
    sde = unconstrained.to_sde(**unconstrained.TRUE_PARAMS)
    with pytest.raises(ValueError, match="`mu1` must be 0"):
        unconstrained.from_sde(sde._replace(mu1=jnp.array([0.0, 0.1])))
    with pytest.raises(ValueError, match="`P1` must be I"):
        unconstrained.from_sde(sde._replace(P1=2.0 * jnp.eye(2)))
    two = unconstrained.to_sde(
        **{**unconstrained.TRUE_PARAMS, "H": jnp.eye(2), "u": jnp.zeros(2), "noise": jnp.ones(2)}
    )
    with pytest.raises(ValueError, match="`R` must be diagonal"):
        unconstrained.from_sde(two._replace(R=jnp.array([[1.0, 0.3], [0.3, 1.0]])))
    with pytest.raises(ValueError, match="positive definite"):
        unconstrained.from_sde(sde._replace(L=jnp.array([[1.0], [1.0]])))
    with pytest.raises(ValueError, match="per-step"):
        unconstrained.from_sde(sde._replace(H=jnp.ones((5, 1, 2))))
    three = {"F": -jnp.eye(3), "L_diag": jnp.ones(3), "L_offdiag": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"`H` must have shape \(1, 3\)"):
        unconstrained.to_sde(**{**unconstrained.TRUE_PARAMS, **three})
    with pytest.raises(ValueError, match="`obs_dim` = 2 but `y` has 1 columns"):
        unconstrained.model(jnp.arange(3.0), jnp.zeros((3, 1)), obs_dim=2)


def test_unconstrained_sites_follow_the_dimensions(key):
    unconstrained = load("unconstrained")
    times = jnp.arange(4.0)
    shapes = {"F": (3, 3), "L_diag": (3,), "L_offdiag": (3,), "H": (2, 3), "u": (2,), "noise": (2,)}
    y = jnp.zeros((4, 2))
    no_simulation = handlers.substitute(unconstrained.model, data={"y": y})
    for args, kwargs in (((times, y), {}), ((times,), {"obs_dim": 2})):
        tr = handlers.trace(handlers.seed(no_simulation, key)).get_trace(
            *args, state_dim=3, **kwargs
        )
        assert {n: s["value"].shape for n, s in tr.items() if n != "y"} == shapes
        assert tr["y"]["fn"].event_shape == (4, 2)
    tr = handlers.trace(handlers.seed(no_simulation, key)).get_trace(times, state_dim=1)
    assert "L_offdiag" not in tr and tr["H"]["value"].shape == (1, 1)
    assert tr["y"]["fn"].event_shape == (4, 1)


def test_unconstrained_gauge_invariance(rng):
    """x -> T x leaves the likelihood (and the identified functionals) unchanged."""
    unconstrained = load("unconstrained")
    named = unconstrained_params(rng, 3, 2)
    sde = unconstrained.to_sde(**named)._replace(P1=jnp.asarray(random_spd(rng, 3)))
    times = jnp.asarray(np.sort(rng.uniform(0.0, 10.0, 30)))
    y = jnp.asarray(rng.normal(size=(30, 2)))  # the likelihoods agree for any data

    def transform(sde, T):
        T = jnp.asarray(T)
        T_inv = jnp.linalg.inv(T)
        return sde._replace(
            F=T @ sde.F @ T_inv, L=T @ sde.L, H=sde.H @ T_inv, mu1=T @ sde.mu1, P1=T @ sde.P1 @ T.T
        )

    @jax.vmap
    def loglik(sde):
        return sdessm.kalman_filter(sde, y, times).log_likelihood

    T = rng.normal(size=(3, 3)) + 2 * np.eye(3)  # a general change of coordinates
    moved = transform(sde, T)
    assert np.max(np.abs(moved.F - sde.F)) > 0.1  # the raw entries do move
    # an orthogonal T keeps P1 = I: the model's own parameters cannot tell the two apart
    model_sde = unconstrained.to_sde(**named)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotated = unconstrained.from_sde(transform(model_sde, rotation))
    assert np.max(np.abs(rotated["F"] - named["F"])) > 0.1
    batch = [sde, moved, model_sde, unconstrained.to_sde(**rotated)]
    ll = loglik(jax.tree.map(lambda *a: jnp.stack(a), *batch))
    np.testing.assert_allclose(ll[1], ll[0], rtol=RTOL)
    np.testing.assert_allclose(ll[3], ll[2], rtol=RTOL)
    # what is identified is unchanged
    np.testing.assert_allclose(
        np.sort_complex(np.linalg.eigvals(moved.F)), np.sort_complex(np.linalg.eigvals(sde.F))
    )

    def acov(sde, tau):  # H expm(F tau) P_inf H^T
        P_inf = scipy.linalg.solve_continuous_lyapunov(np.asarray(sde.F), -np.asarray(sde.Q))
        H = np.asarray(sde.H)
        return H @ scipy.linalg.expm(np.asarray(sde.F) * tau) @ P_inf @ H.T

    np.testing.assert_allclose(acov(moved, 0.7), acov(sde, 0.7), rtol=1e-9, atol=1e-12)


def test_unconstrained_em_closed_form_marker(key):
    """`EM_CLOSED_FORM` is a valid set of `fit_em` options, and `from_sde` reads its answer."""
    unconstrained = load("unconstrained")
    truth = unconstrained.to_sde(**unconstrained.TRUE_PARAMS)
    times = jnp.arange(100.0) * 0.2
    _, y = sdessm.simulate(key, truth, times)
    result = sdessm.fit_em(
        truth, y, times, num_iters=2, progress=False, **unconstrained.EM_CLOSED_FORM
    )
    named = unconstrained.from_sde(result.sde)
    assert set(named) == set(unconstrained.TRUE_PARAMS)
    np.testing.assert_allclose(result.sde.P1, np.eye(2))


# --- the trend plus seasonal cycle --------------------------------------------------------------


def test_trend_seasonal_is_a_trend_and_damped_rotations():
    """F's eigenvalues are 0 (twice: level and slope) and -lam +- i j omega for each harmonic; the
    cycle's initial law is stationary; y sees the level and the first coordinate of each
    harmonic."""
    module = load("trend_seasonal")
    values = dict(module.TRUE_PARAMS, sigma=[1.3, 0.5, 0.2])  # three harmonics
    sde = module.to_sde(**values)
    omega, lam = values["omega"], values["lam"]
    want = [0.0, 0.0] + [complex(-lam, s * j * omega) for j in (1, 2, 3) for s in (1, -1)]
    got = np.linalg.eigvals(np.asarray(sde.F))
    order = lambda z: (z.imag, z.real)  # noqa: E731
    np.testing.assert_allclose(sorted(got, key=order), sorted(want, key=order), atol=1e-12)
    F, Q, P1 = (np.asarray(a)[2:, 2:] for a in (sde.F, sde.Q, sde.P1))
    stationary = scipy.linalg.solve_continuous_lyapunov(F, -Q)
    np.testing.assert_allclose(P1, stationary, rtol=1e-12, atol=1e-14 * np.max(P1))
    assert np.asarray(sde.H).tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    assert np.asarray(sde.mu1)[:2].tolist() == [values["level0"], values["slope0"]]


def test_trend_seasonal_start_finds_the_period_and_the_trend():
    module = load("trend_seasonal")
    times = 1958.0 + np.arange(480) / 12.0  # 40 years, monthly
    _, y = sdessm.simulate(jax.random.key(4), module.to_sde(**module.TRUE_PARAMS), times)
    y = np.array(y)
    y[::7] = np.nan
    start = module.start_from_data(times, y)
    assert start["omega"] == pytest.approx(2 * np.pi, rel=0.01)  # one cycle a year
    assert start["slope0"] == pytest.approx(module.TRUE_PARAMS["slope0"], rel=0.5)
    assert abs(start["level0"] - module.TRUE_PARAMS["level0"]) < 5 * np.nanstd(np.diff(y[:, 0]))
    weeks = module.start_from_data(times * 52.0, y)  # the same data, time in weeks
    assert weeks["omega"] == pytest.approx(start["omega"] / 52.0, rel=1e-6)


def test_the_shipped_data_are_the_sources_values():
    """Each data set equals the copy statsmodels redistributes (its stated source), with the
    renamings the data README states; every one is described there."""
    import statsmodels.datasets as smd

    from sdessm import datasets

    readme = (Path(datasets.path("nile")).parent / "README.md").read_text()
    for name in datasets.available():
        licence = datasets.info(name)["licence"]
        assert f"## {name}.csv" in readme and ("public domain" in licence or "BSD" in licence)
    nile = datasets.load("nile")
    source = smd.nile.load_pandas().data
    np.testing.assert_array_equal(nile["year"], source["year"].astype(int))
    np.testing.assert_array_equal(nile["volume"], source["volume"])
    spots = datasets.load("sunspots")
    source = smd.sunspots.load_pandas().data
    np.testing.assert_array_equal(spots["year"], source["YEAR"].astype(int))
    np.testing.assert_array_equal(spots["sunspots"], source["SUNACTIVITY"])


def test_the_greensboro_data_are_a_july_of_hours_with_the_sun_by_day():
    """The hourly July (pvlib is not a test dependency to compare with its file): 744 hours in
    order, no gap, irradiance zero at night (local standard time) and up to a clear-sky noon,
    temperatures of a North Carolina summer."""
    from sdessm import datasets

    df = datasets.load("greensboro_july")
    assert list(df.columns) == ["hour", "temperature", "ghi"]
    np.testing.assert_array_equal(df["hour"], np.arange(1, 745))
    clock = df["hour"].to_numpy() % 24  # the end of each hour
    night = (clock >= 21) | (clock <= 5)
    assert np.all(df["ghi"][night] == 0) and 900 < df["ghi"].max() < 1100
    assert 10 < df["temperature"].min() < df["temperature"].max() < 40
    assert datasets.info("greensboro_july")["time_column"] == "hour"
