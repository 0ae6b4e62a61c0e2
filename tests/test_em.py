"""EM: monotone log-likelihood on every path, stationary M-steps, peer agreement, SDE recovery."""


import jax.numpy as jnp
import numpy as np
import pytest
from reference import random_spd, random_stable_drift

import sdessm


def _sde(rng, d, p, H=None):
    return sdessm.SDEParams(
        F=random_stable_drift(rng, d),
        L=rng.normal(size=(d, d)) * 0.6,
        H=rng.normal(size=(p, d)) if H is None else H,
        u=rng.normal(size=p),
        R=random_spd(rng, p, 0.2),
        mu1=rng.normal(size=d),
        P1=random_spd(rng, d),
    )


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
    truth = _sde(rng, 2, 2)
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
        y[rng.uniform(size=y.shape) < cfg["missing"]] = np.nan
        y[:, -1] = 0.0  # no padding here
    init = _perturbed(rng, truth)
    res = sdessm.fit_em(init, y, num_iters=12, progress=False, tol=0.0, **kw, **cfg["fit"])
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
