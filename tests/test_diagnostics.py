"""Recovery diagnostics: the table against direct computations, the identifiable functionals
against closed forms and the gauge symmetry, and the plots (ArviZ 0.x and 1.x)."""

import json

import arviz as az
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from matplotlib.figure import Figure
from reference import linear_sde
from sdessm.models import load

import sdessm
from sdessm import diagnostics as dg


def _idata(posterior: dict, attrs: dict | None = None):
    try:  # ArviZ 0.x
        idata = az.from_dict(posterior=posterior)
    except TypeError:  # ArviZ 1.x
        idata = az.from_dict({"posterior": posterior})
    for k, v in (attrs or {}).items():
        idata["posterior"].attrs[k] = v
    return idata


@pytest.fixture
def draws():
    rng = np.random.default_rng(0)
    ar = np.zeros((4, 500))
    for t in range(1, 500):  # autocorrelated chains, so ESS < number of draws
        ar[:, t] = 0.8 * ar[:, t - 1] + rng.normal(size=4)
    return {
        "theta": 0.5 + 0.05 * ar,
        "vec": rng.normal(size=(4, 500, 2)) + np.array([1.0, -2.0]),
        "fixed": np.zeros((4, 500)),
    }


def test_recovery_table_against_direct_computation(draws):
    truth = {"theta": 0.52, "vec": [1.0, 5.0], "fixed": 0.0}
    idata = _idata(draws, {"sdessm_truth": json.dumps(truth)})
    table = dg.recovery_table(idata, em={"theta": 0.49, "vec": [0.9, -2.1], "fixed": 0.0})
    assert list(table.index) == ["theta", "vec[0]", "vec[1]"]  # constants are left out
    x = draws["theta"]
    row = table.loc["theta"]
    np.testing.assert_allclose(row["mean"], x.mean(), rtol=1e-12)
    np.testing.assert_allclose(row["sd"], x.std(ddof=1), rtol=1e-12)
    np.testing.assert_allclose(row["r_hat"], float(az.rhat(x)), rtol=1e-12)
    assert 30 < row["ess_bulk"] < 2000 and row["ess_tail"] > 0
    # the HDI: the shortest interval holding 94% of the sorted draws
    s = np.sort(x.ravel())
    k = int(np.floor(0.94 * s.size))
    widths = s[k:] - s[: s.size - k]
    i = int(np.argmin(widths))
    np.testing.assert_allclose([row["hdi_low"], row["hdi_high"]], [s[i], s[i + k]], atol=1e-2)
    assert row["truth"] == 0.52 and row["em"] == 0.49
    assert row["truth_in_hdi"] and row["em_in_hdi"]
    assert not table.loc["vec[1]", "truth_in_hdi"]  # 5.0 is far outside N(-2, 1)
    with pytest.raises(ValueError, match=r"`em` names sites \['omega'\]"):
        dg.recovery_table(idata, em={"omega": 1.0})
    with pytest.raises(ValueError, match="`hdi_prob` must lie in"):
        dg.recovery_table(idata, hdi_prob=1.5)


def test_identifiable_functionals_closed_forms_and_gauge(rng):
    ou = load("ou")
    theta, sigma = 0.7, 0.9
    sde = ou.to_sde(jnp.asarray(theta), jnp.asarray(sigma), jnp.asarray(2.0), jnp.asarray(0.1))
    q = dg.identifiable(sde, lags=(0.0, 1.5))
    var = sigma**2 / (2 * theta)  # C(tau) = sigma^2 / (2 theta) exp(-theta tau)
    np.testing.assert_allclose(q["C(tau=0)"], [[var]], rtol=1e-12)
    np.testing.assert_allclose(q["C(tau=1.5)"], [[var * np.exp(-theta * 1.5)]], rtol=1e-12)
    np.testing.assert_allclose(q["Re eig F"], [-theta], rtol=1e-12)
    # unchanged by a change of state coordinates x -> T x
    F = np.array([[-0.3, 1.2], [-0.8, -0.4]])
    L = np.array([[0.6, 0.0], [0.3, 0.4]])
    H = np.array([[1.0, 0.5]])
    base = linear_sde(F, L, H, u=1.0, R=0.04)
    T = rng.normal(size=(2, 2)) + 2 * np.eye(2)
    Ti = np.linalg.inv(T)
    moved = base._replace(F=T @ F @ Ti, L=T @ L, H=H @ Ti)
    a, b = dg.identifiable(base, (0.0, 0.7)), dg.identifiable(moved, (0.0, 0.7))
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12, err_msg=k)
    P = scipy.linalg.solve_continuous_lyapunov(F, -L @ L.T)
    np.testing.assert_allclose(a["C(tau=0.7)"], H @ scipy.linalg.expm(F * 0.7) @ P @ H.T)
    np.testing.assert_allclose(a["|Im eig F|"], np.abs(np.linalg.eigvals(F).imag), rtol=1e-12)


def test_recovery_table_with_a_functional(draws):
    idata = _idata({"theta": draws["theta"]})

    def functional(v):
        return {"rate": v["theta"], "timescale": 1.0 / v["theta"]}

    table = dg.recovery_table(idata, em={"theta": 0.5}, truth={"theta": 0.5}, functional=functional)
    np.testing.assert_allclose(table.loc["timescale", "mean"], np.mean(1 / draws["theta"]))
    assert table.loc["timescale", "truth"] == 2.0


def test_plots_are_figures(draws, tmp_path):
    idata = _idata({"theta": draws["theta"], "vec": draws["vec"]})
    table = dg.recovery_table(idata, truth={"theta": 0.5, "vec": [1.0, -2.0]})
    em = sdessm.EMResult(
        params={},
        discrete=None,
        log_likelihoods=np.array([-10.0, -5.0, -4.9]),
        converged=True,
        num_iters=2,
        report={"stopped": "converged"},
    )
    figures = {
        "recovery": (dg.plot_recovery(table), 3),
        "trace": (dg.plot_trace_rank(idata), 6),
        "em": (dg.plot_em_history(em), 2),  # the objective, and its gap to the final value
    }
    for name, (fig, n_axes) in figures.items():
        assert isinstance(fig, Figure) and len(fig.axes) == n_axes, name
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_em_history_shows_the_gap_to_the_final_value_on_a_log_scale():
    em = sdessm.EMResult(
        params={},
        discrete=None,
        log_likelihoods=np.array([-10.0, -5.0, -4.9, -4.9]),
        converged=True,
        num_iters=3,
        report={"stopped": "converged", "log_posteriors": np.array([-12.0, -6.0, -5.5, -5.4])},
    )
    fig = dg.plot_em_history(em)
    gap_axes = fig.axes[1]
    assert gap_axes.get_yscale() == "log"
    ll_gap, post_gap = (line.get_ydata() for line in gap_axes.lines)
    np.testing.assert_allclose(ll_gap, [5.1, 0.1])  # positive gaps only: the last is 0
    np.testing.assert_allclose(post_gap, [6.6, 0.6, 0.1])


def test_smoothed_observations_are_the_signal_h_m_plus_u_with_named_panels(key):
    ou = load("ou")
    sde = ou.to_sde(**{k: jnp.asarray(v) for k, v in ou.TRUE_PARAMS.items()})
    times = np.arange(30) * 0.5
    y = np.array(sdessm.simulate(key, sde, times)[1])
    smoothed = sdessm.rts_smoother(sde, y, times)
    fig = dg.plot_smoothed_observations(times, smoothed, y, sde, names=["flow"])
    (ax,) = fig.axes
    assert ax.get_ylabel() == "flow"
    signal, data = (line.get_ydata() for line in ax.lines)
    H, u = np.asarray(sde.H), np.asarray(sde.u)
    np.testing.assert_allclose(signal, np.asarray(smoothed.smoothed_means) @ H[0] + u[0])
    np.testing.assert_array_equal(data, y[:, 0])
    # the state panel shows the data less the offset u, labelled with the column's name
    fig = dg.plot_smoothed_states(times, smoothed, y, H=sde.H, u=sde.u, obs_names=["flow"])
    shown = [line for line in fig.axes[0].lines if line.get_label() == "observed flow - u"]
    np.testing.assert_allclose(shown[0].get_ydata(), y[:, 0] - u[0])
