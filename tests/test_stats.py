"""E-step statistics against the dense joint posterior of states and missing observations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import (
    dense_stats,
    random_problem,
    random_sde,
    scalar_ou,
    with_missing,
)

import sdessm
from sdessm.kalman import smoother_sequence
from sdessm.problem import resolve, shares_mask
from sdessm.stats import SufficientStats, _add, _wsum, expected_stats
from sdessm.steady import SHORTCUT_FROM, steady_covariances, steady_state_applies

RTOL, ATOL = 1e-8, 1e-10


def estep(lg, y, groups=None, **static):
    """`expected_stats` under `jit`, its static options bound (as EM calls it)."""
    return jax.jit(functools.partial(expected_stats, **static))(lg, y, groups)


@pytest.mark.parametrize("missing", [0.0, 0.35])
@pytest.mark.parametrize("d, p", [(2, 3), (3, 2)])
def test_stats_match_dense_posterior(rng, missing, d, p):
    _, _, arrays, _ = random_problem(rng, 6, d, p)
    ys = rng.normal(size=(3, 6, p))
    if missing:
        ys = with_missing(rng, ys, missing)
        ys[:, -1, 0] = 0.3  # keep the last row observed: no padding here
        ys[:, 2] = np.nan  # an all-NaN step inside: no emission statistic
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    stats, logliks = estep(lg, y)
    ref = dense_stats(arrays, ys)
    for name, value in ref.items():
        got = getattr(stats, name)
        got = got[0] if name in ("S00", "S10", "S11") else got
        np.testing.assert_allclose(got, value, rtol=RTOL, atol=ATOL, err_msg=name)
    assert float(stats.num_sequences) == 3
    np.testing.assert_allclose(stats.num_transitions, [15.0])
    assert float(stats.num_emissions) == np.sum(np.any(~np.isnan(ys), axis=-1))  # not all-NaN
    np.testing.assert_allclose(logliks, sdessm.kalman_filter(lg, ys).log_likelihood, rtol=1e-12)


def test_trailing_nan_rows_are_padding(rng):
    _, _, arrays, _ = random_problem(rng, 7, 2, 2)
    ys = rng.normal(size=(2, 7, 2))
    ys[1, 4:] = np.nan  # the second sequence has 4 observations
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
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
    lg, yb, *_ = resolve(sdessm.LGSSMParams(*arrays), y[None])
    groups = np.array([0, 1, 0, 1, 1])
    split, _ = expected_stats(lg, yb, groups=groups, num_groups=2)
    whole, _ = expected_stats(lg, yb)
    np.testing.assert_allclose(split.S10.sum(0), whole.S10[0], rtol=1e-12)
    np.testing.assert_allclose(split.num_transitions, [2.0, 3.0])


def test_per_step_emission_stats(rng):
    _, _, arrays, _ = random_problem(rng, 5, 2, 2, per_step_emissions=True)
    ys = rng.normal(size=(4, 5, 2))
    ys[0, 1, 0] = np.nan
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    per, _ = expected_stats(lg, y, per_step=True)
    total, _ = expected_stats(lg, y)
    assert per.yy.shape == (5, 2, 2) and per.num_emissions.shape == (5,)
    np.testing.assert_allclose(per.yx.sum(0), total.yx, rtol=1e-12)
    np.testing.assert_allclose(per.num_emissions, [4.0] * 5)
    # an all-NaN step stays latent per step (a step no sequence observes keeps H_k, u_k, R_k)
    # and adds nothing to the shared sums
    ys[0, 1] = np.nan
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    np.testing.assert_allclose(expected_stats(lg, y, per_step=True)[0].num_emissions, [4.0] * 5)
    assert float(expected_stats(lg, y)[0].num_emissions) == 19


@pytest.mark.parametrize("per_step", [False, True])
def test_complete_data_fast_path_equals_general_path(rng, per_step):
    _, _, arrays, _ = random_problem(rng, 8, 3, 2, irregular=True)
    ys = rng.normal(size=(3, 8, 2))
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    fast, ll_fast = expected_stats(lg, y, per_step=per_step, complete=True)
    general, ll = expected_stats(
        lg, y, groups=np.zeros(7, dtype=np.int32), num_groups=2, per_step=per_step
    )
    for name, a, b in zip(fast._fields, fast, general, strict=True):
        b = b[:1] if name in ("S00", "S10", "S11", "num_transitions") else b
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(ll_fast, ll, rtol=1e-12)


_smoother = jax.jit(smoother_sequence)


def plain_stats(lg, ys, groups=None, num_groups=1, per_step=False):
    """The plain recursion: `kalman.smoother_sequence` on each sequence, its moments summed by hand
    in NumPy (missing entries of y completed by their regression on the observed ones)."""
    ys = np.asarray(ys, dtype=float)
    B, T, p = ys.shape
    d = np.shape(lg.mu1)[-1]
    G = num_groups
    groups = np.broadcast_to(np.zeros(T - 1, int) if groups is None else groups, (B, T - 1))
    tv = lg.time_varying()

    def at(name, k):
        return np.asarray(getattr(lg, name)[k] if tv[name] else getattr(lg, name))

    out = dict(
        x1=np.zeros(d),
        x1x1=np.zeros((d, d)),
        num_sequences=float(B),
        S00=np.zeros((G, d, d)),
        S10=np.zeros((G, d, d)),
        S11=np.zeros((G, d, d)),
        num_transitions=np.zeros(G),
        yy=np.zeros((T, p, p)),
        yx=np.zeros((T, p, d + 1)),
        xx=np.zeros((T, d + 1, d + 1)),
        num_emissions=np.zeros(T),
    )
    logliks = []
    for b in range(B):
        sm = _smoother(lg, jnp.asarray(ys[b]))
        m, P, C = (np.asarray(a) for a in sm[:3])
        logliks.append(float(sm.log_likelihood))
        obs = ~np.isnan(ys[b])
        rows = np.flatnonzero(obs.any(axis=1))
        length = rows[-1] + 1 if rows.size else T  # trailing all-NaN rows are padding
        Exx = P + m[:, :, None] * m[:, None, :]
        out["x1"] += m[0]
        out["x1x1"] += Exx[0]
        for k in range(length - 1):
            g = groups[b, k]
            out["S00"][g] += Exx[k]
            out["S11"][g] += Exx[k + 1]
            out["S10"][g] += C[k] + np.outer(m[k + 1], m[k])
            out["num_transitions"][g] += 1
        for k in range(length):
            if not per_step and not obs[k].any():
                continue  # an all-NaN step adds no shared emission statistic
            H, u, R = at("H", k), at("u", k), at("R", k)
            o, mis = obs[k], ~obs[k]
            J, c, cov = np.zeros((p, d)), np.where(o, ys[b, k], 0.0), np.zeros((p, p))
            if mis.any():
                coef = R[np.ix_(mis, o)] @ np.linalg.inv(R[np.ix_(o, o)])
                J[mis] = H[mis] - coef @ H[o]
                c[mis] = u[mis] + coef @ (ys[b, k, o] - u[o])
                cov[np.ix_(mis, mis)] = R[np.ix_(mis, mis)] - coef @ R[np.ix_(o, mis)]
            Ey, xhat = J @ m[k] + c, np.append(m[k], 1.0)
            out["yy"][k] += J @ P[k] @ J.T + np.outer(Ey, Ey) + cov
            out["yx"][k] += np.outer(Ey, xhat)
            out["yx"][k, :, :d] += J @ P[k]
            out["xx"][k] += np.outer(xhat, xhat)
            out["xx"][k, :d, :d] += P[k]
            out["num_emissions"][k] += 1
    if not per_step:
        for name in ("yy", "yx", "xx", "num_emissions"):
            out[name] = out[name].sum(axis=0)
    return SufficientStats(**out), np.array(logliks)


def assert_stats_equal(got, want, rtol=1e-10):
    stats, logliks = got
    for name, a, b in zip(SufficientStats._fields, stats, want[0], strict=True):
        b = np.asarray(b)
        assert np.shape(a) == b.shape, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=name)
    np.testing.assert_allclose(logliks, want[1], rtol=rtol)


@pytest.mark.parametrize("converges", [True, False])
def test_steady_state_shortcut_equals_full_recursion(rng, key, converges):
    # the shortest data that take the shortcut, and longer ones
    T = SHORTCUT_FROM if converges else SHORTCUT_FROM + 37
    if converges:
        sde = random_sde(rng, 3, 2, L_scale=1.0, R_scale=0.3, random_x1=False)
    else:  # a random walk with tiny diffusion: the Riccati recursion takes ~1e4 steps
        sde = scalar_ou(0.0, 1e-4)
    lg, yb, *_ = resolve(
        sde.discretize(dt=0.2),
        sdessm.simulate(key, sde, dt=0.2, num_timesteps=T, num_sequences=3)[1],
    )
    assert steady_state_applies(lg, T, True, False)
    assert bool(steady_covariances(lg, T)["ok"]) == converges
    stats, logliks = jax.jit(lambda p, y: expected_stats(p, y, complete=True))(lg, yb)
    assert_stats_equal((stats, logliks), plain_stats(lg, yb))


def _masked(rng, ys, kind):
    """NaNs in `ys` (B, T, p): none, one mask for all sequences (ending in padding), or a mask
    of each sequence's own (one of them padded)."""
    ys = ys.copy()
    if kind == "same":
        mask = rng.uniform(size=ys.shape[1:]) < 0.3
        mask[0, 0] = False
        mask[-2:] = True  # trailing padding, shared
        ys[:, mask] = np.nan
    elif kind == "different":
        ys = with_missing(rng, ys, 0.3)
        ys[1, -3:] = np.nan  # one sequence is shorter
        ys[2, 4] = np.nan  # a row missing entirely inside a sequence
    return ys


@pytest.mark.parametrize("kind", ["complete", "same", "different"])
def test_sequences_match_plain_recursion(rng, kind):
    _, _, arrays, _ = random_problem(rng, 12, 3, 2)
    ys = _masked(rng, rng.normal(size=(4, 12, 2)), kind)
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    assert shares_mask(y) == (kind != "different") and not shares_mask(jnp.ones((1, 1)) > 0)
    promise = dict(complete=kind == "complete", same_mask=kind == "same")
    for per_step in (False, True):
        got = estep(lg, y, per_step=per_step, **promise)
        assert_stats_equal(got, plain_stats(lg, ys, per_step=per_step))
    if kind == "same":  # the same data smoothed one sequence at a time
        assert_stats_equal(estep(lg, y), plain_stats(lg, ys))


@pytest.mark.parametrize(
    "kind, per_step", [("complete", False), ("same", True), ("different", False)]
)
def test_groups_match_plain_recursion(rng, kind, per_step):
    _, _, arrays, _ = random_problem(rng, 10, 2, 2, irregular=True)
    ys = _masked(rng, rng.normal(size=(3, 10, 2)), kind)
    groups = rng.integers(0, 3, size=9).astype(np.int32)
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    promise = dict(complete=kind == "complete", same_mask=kind == "same")
    got = estep(lg, y, groups, num_groups=3, per_step=per_step, **promise)
    assert_stats_equal(got, plain_stats(lg, ys, groups, 3, per_step))


def test_per_sequence_groups_and_params(rng):
    _, _, arrays, _ = random_problem(rng, 8, 2, 2, irregular=True)
    A = np.stack([arrays[0], 0.9 * arrays[0], 0.8 * arrays[0]])
    Sigma = np.stack([arrays[1], 1.1 * arrays[1], 1.2 * arrays[1]])
    ys = _masked(rng, rng.normal(size=(3, 8, 2)), "different")
    groups = rng.integers(0, 2, size=(3, 7)).astype(np.int32)
    lg = sdessm.LGSSMParams(*(jnp.asarray(a) for a in (A, Sigma, *arrays[2:])))
    got = estep(lg, ys, groups, num_groups=2, params_batched=True)
    parts = [
        plain_stats(lg._replace(A=A[b], Sigma=Sigma[b]), ys[b : b + 1], groups[b], 2)
        for b in range(3)
    ]
    total = SufficientStats(*(sum(a) for a in zip(*(s for s, _ in parts), strict=True)))
    assert_stats_equal(got, (total, np.concatenate([ll for _, ll in parts])))


@pytest.mark.parametrize("kind, per_step", [("same", False), ("different", True)])
def test_mask_table_matches_plain_recursion(rng, kind, per_step):
    """With shared H, R and T >= 2^p the emission moments come from a table of all masks."""
    _, _, arrays, _ = random_problem(rng, 20, 2, 3)
    ys = _masked(rng, rng.normal(size=(3, 20, 3)), kind)
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    got = estep(lg, y, per_step=per_step)
    assert_stats_equal(got, plain_stats(lg, ys, per_step=per_step))


def test_per_step_emissions_match_plain_recursion(rng):
    _, _, arrays, _ = random_problem(rng, 6, 2, 3, per_step_emissions=True)
    ys = _masked(rng, rng.normal(size=(3, 6, 3)), "different")
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    for per_step in (False, True):
        got = estep(lg, y, per_step=per_step)
        assert_stats_equal(got, plain_stats(lg, ys, per_step=per_step))


@pytest.mark.parametrize("kind", ["complete", "different"])
def test_single_step_sequences(rng, kind):
    _, _, arrays, _ = random_problem(rng, 2, 2, 2)
    ys = rng.normal(size=(2, 1, 2))
    if kind == "different":
        ys[0, 0, 1] = np.nan
    lg, y, *_ = resolve(sdessm.LGSSMParams(arrays[0][0], arrays[1][0], *arrays[2:]), ys)
    got = estep(lg, y, complete=kind == "complete")
    assert_stats_equal(got, plain_stats(lg, ys))


def test_same_mask_sequences_match_dense_posterior(rng):
    _, _, arrays, _ = random_problem(rng, 6, 2, 3)
    ys = rng.normal(size=(3, 6, 3))
    ys[:, rng.uniform(size=(6, 3)) < 0.35] = np.nan
    ys[:, -1, 0] = 0.3  # the last row observed: no padding here
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    stats, _ = expected_stats(lg, y)  # eager: the equal masks are found on the concrete y
    for name, value in dense_stats(arrays, ys).items():
        got = getattr(stats, name)
        got = got[0] if name in ("S00", "S10", "S11") else got
        np.testing.assert_allclose(got, value, rtol=RTOL, atol=ATOL, err_msg=name)


def test_float32_statistics_agree_with_float64(rng):
    _, _, arrays, _ = random_problem(rng, 300, 2, 2)
    ys = _masked(rng, rng.normal(size=(3, 300, 2)), "different")
    lg, y, *_ = resolve(sdessm.LGSSMParams(*arrays), ys)
    lg32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), lg)
    got = estep(lg32, y.astype(jnp.float32))
    assert got[0].S00.dtype == jnp.float32
    assert_stats_equal(got, estep(lg, y), rtol=1e-4)


def test_float32_running_sums_stay_accurate():
    """Kahan summation in the scans and a fused reduction for the mean products: 10^6 float32
    terms summed to float32 accuracy (plain running sums lose ~1e-4 here)."""
    x = jnp.full((1_000_000, 1, 2), 0.1, jnp.float32)
    zero = jnp.zeros((2,), jnp.float32)
    (total, _), _ = jax.lax.scan(lambda a, x: (_add(a, x[0], True), None), (zero, zero), x)
    np.testing.assert_allclose(total, 1e5, rtol=1e-6)
    np.testing.assert_allclose(_wsum(None, x, x), np.full((2, 2), 1e4), rtol=1e-6)
