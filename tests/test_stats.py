"""E-step statistics against the dense joint posterior of states and missing observations."""

import jax
import numpy as np
import pytest
from reference import dense_stats, random_problem, random_spd, random_stable_drift

import sdessm
from sdessm.kalman import prepare
from sdessm.stats import (
    STEADY_STEPS,
    SufficientStats,
    _sequence_stats,
    _steady_covariances,
    expected_stats,
)

RTOL, ATOL = 1e-8, 1e-10


@pytest.mark.parametrize("missing", [0.0, 0.35])
@pytest.mark.parametrize("d, p", [(2, 3), (3, 2)])
def test_stats_match_dense_posterior(rng, missing, d, p):
    _, _, arrays, _ = random_problem(rng, 6, d, p)
    ys = rng.normal(size=(3, 6, p))
    if missing:
        ys[rng.uniform(size=ys.shape) < missing] = np.nan
        ys[:, -1, 0] = 0.3  # keep the last row observed: no padding here
    lg, y, _ = prepare(sdessm.LGSSMParams(*arrays), ys)
    stats, logliks = expected_stats(lg, y)
    ref = dense_stats(arrays, ys)
    for name, value in ref.items():
        got = getattr(stats, name)
        got = got[0] if name in ("S00", "S10", "S11") else got
        np.testing.assert_allclose(got, value, rtol=RTOL, atol=ATOL, err_msg=name)
    assert float(stats.num_sequences) == 3
    np.testing.assert_allclose(stats.num_transitions, [15.0])
    assert float(stats.num_emissions) == 18
    np.testing.assert_allclose(logliks, sdessm.kalman_filter(lg, ys).log_likelihood, rtol=1e-12)


def test_trailing_nan_rows_are_padding(rng):
    _, _, arrays, _ = random_problem(rng, 7, 2, 2)
    ys = rng.normal(size=(2, 7, 2))
    ys[1, 4:] = np.nan  # the second sequence has 4 observations
    lg, y, _ = prepare(sdessm.LGSSMParams(*arrays), ys)
    stats, _ = expected_stats(lg, y)
    ref_a = dense_stats(arrays, ys[:1])
    short = tuple(a[:3] if i < 2 else a for i, a in enumerate(arrays))
    ref_b = dense_stats(short, ys[1:, :4])
    for name in ref_a:
        got = getattr(stats, name)
        got = got[0] if name in ("S00", "S10", "S11") else got
        np.testing.assert_allclose(got, ref_a[name] + ref_b[name], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(stats.num_transitions, [6.0 + 3.0])
    assert float(stats.num_emissions) == 7 + 4


def test_groups_split_transitions(rng):
    _, _, arrays, y = random_problem(rng, 6, 2, 2, irregular=True)
    lg, yb, _ = prepare(sdessm.LGSSMParams(*arrays), y[None])
    groups = np.array([0, 1, 0, 1, 1])
    split, _ = expected_stats(lg, yb, groups=groups, num_groups=2)
    whole, _ = expected_stats(lg, yb)
    np.testing.assert_allclose(split.S10.sum(0), whole.S10[0], rtol=1e-12)
    np.testing.assert_allclose(split.num_transitions, [2.0, 3.0])


def test_per_step_emission_stats(rng):
    _, _, arrays, _ = random_problem(rng, 5, 2, 2, per_step_emissions=True)
    ys = rng.normal(size=(4, 5, 2))
    ys[0, 1] = np.nan
    lg, y, _ = prepare(sdessm.LGSSMParams(*arrays), ys)
    per, _ = expected_stats(lg, y, per_step=True)
    total, _ = expected_stats(lg, y)
    assert per.yy.shape == (5, 2, 2) and per.num_emissions.shape == (5,)
    np.testing.assert_allclose(per.yx.sum(0), total.yx, rtol=1e-12)
    np.testing.assert_allclose(per.num_emissions, [4.0] * 5)


@pytest.mark.parametrize("per_step", [False, True])
def test_complete_data_fast_path_equals_general_path(rng, per_step):
    _, _, arrays, _ = random_problem(rng, 8, 3, 2, irregular=True)
    ys = rng.normal(size=(3, 8, 2))
    lg, y, _ = prepare(sdessm.LGSSMParams(*arrays), ys)
    fast, ll_fast = expected_stats(lg, y, per_step=per_step, complete=True)
    general, ll = expected_stats(
        lg, y, groups=np.zeros(7, dtype=np.int32), num_groups=2, per_step=per_step
    )
    for name, a, b in zip(fast._fields, fast, general, strict=True):
        b = b[:1] if name in ("S00", "S10", "S11", "num_transitions") else b
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(ll_fast, ll, rtol=1e-12)


def _full_stats(lg, yb):
    """The plain recursion, step by step, summed over sequences (no steady-state shortcut)."""
    T = yb.shape[1]
    per_seq = [
        _sequence_stats(lg, yb[b], np.zeros(T - 1, dtype=np.int32), 1, False, False)
        for b in range(yb.shape[0])
    ]
    stats = SufficientStats(*(sum(s[0][i] for s in per_seq) for i in range(11)))
    return stats, np.array([s[1] for s in per_seq])


@pytest.mark.parametrize("converges", [True, False])
def test_steady_state_shortcut_equals_full_recursion(rng, key, converges):
    T = 4 * STEADY_STEPS + 37
    if converges:
        sde = sdessm.SDEParams(
            F=random_stable_drift(rng, 3),
            L=rng.normal(size=(3, 3)),
            H=rng.normal(size=(2, 3)),
            u=rng.normal(size=2),
            R=random_spd(rng, 2, 0.3),
            mu1=np.zeros(3),
            P1=np.eye(3),
        )
    else:  # a random walk with tiny diffusion: the Riccati recursion takes ~1e4 steps
        sde = sdessm.SDEParams(
            F=np.zeros((1, 1)),
            L=[[1e-4]],
            H=np.eye(1),
            u=np.zeros(1),
            R=np.eye(1),
            mu1=np.zeros(1),
            P1=np.eye(1),
        )
    lg, yb, _ = prepare(
        sde.discretize(dt=0.2),
        sdessm.simulate(key, sde, dt=0.2, num_timesteps=T, num_sequences=3)[1],
    )
    assert bool(_steady_covariances(lg)["ok"]) == converges
    stats, logliks = jax.jit(lambda p, y: expected_stats(p, y, complete=True))(lg, yb)
    ref, ref_ll = _full_stats(lg, yb)
    for name, a, b in zip(stats._fields, stats, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max(), err_msg=name)
    np.testing.assert_allclose(logliks, ref_ll, rtol=1e-12)
