"""The command line and atomic output, end to end in a temporary folder."""

import csv
import json
import os

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from sdessm.models import available, load

import sdessm
from sdessm import cli
from sdessm.io import atomic_path, read_csv, write_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


OU = load("ou")
QUICK = ["--num-timesteps", "60", "--chains", "1", "--warmup", "30", "--draws", "30"]


def test_demo_writes_results_plots_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")  # replaced as a whole
    assert cli.main(["demo", "--out", str(out), "--seed", "3", *QUICK]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "params.json",
            "em_history.csv",
            "posterior.nc",
            "report.html",
            "smoothed_states.png",
            "em_history.png",
            "recovery.png",
            "trace_rank.png",
        ]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    results = json.loads((out / "params.json").read_text())
    assert results["truth"]["omega"] == 2.0 and set(results["em"]["params"]) == set(
        results["truth"]
    )
    assert set(results["recovery"]) == {"noise", "omega", "sigma", "zeta"}
    history = np.loadtxt(out / "em_history.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(history[-1, 1], results["em"]["log_likelihood"])
    assert np.all(np.diff(history[:, 2]) >= -1e-9 * abs(history[-1, 2]))  # MAP: log-posterior
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, png
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "recovery.png").stat().st_mode & 0o777 == 0o666 & ~mask
    page = (out / "report.html").read_text()
    assert "<table" in page and "omega" in page and page.count("data:image/png;base64,") == 4
    idata = az.from_netcdf(out / "posterior.nc")
    assert json.loads(idata["posterior"].attrs["sdessm_truth"])["omega"] == 2.0
    printed = capsys.readouterr().out
    assert "r_hat" in printed and "omega" in printed and "report.html" in printed


def test_saved_results_load_back_exactly(tmp_path, monkeypatch):
    """What `fit` and `demo` write (parameters, EM history, ArviZ data) reads back bit for bit."""
    from test_diagnostics import _idata

    fits = []
    real_fit_em = sdessm.fit_em

    def keep(*args, **kwargs):
        fits.append(real_fit_em(*args, **kwargs))
        return fits[-1]

    monkeypatch.setattr("sdessm.em.fit_em", keep)
    times = np.arange(60) * 0.25
    sde = OU.to_sde(**{k: jnp.asarray(v) for k, v in OU.TRUE_PARAMS.items()})
    y = np.array(sdessm.simulate(jax.random.key(0), sde, times)[1])
    data = tmp_path / "d.csv"
    sdessm.io.write_csv(data, times, y, ["y"])
    out = tmp_path / "fit"
    assert cli.main(["fit", str(data), "--model", "ou", "--out", str(out)]) == 0
    em = fits[-1]  # the outer call (a NumPyro model is fitted through an inner one)
    saved = json.loads((out / "params.json").read_text())
    for k, v in em.params.items():
        assert saved["params"][k] == float(v)  # JSON keeps every bit of a float64
    assert saved["log_likelihood"] == em.log_likelihood
    with open(out / "em_history.csv", newline="") as f:  # Python's float() is exact
        history = [float(row["log_likelihood"]) for row in csv.DictReader(f)]
    np.testing.assert_array_equal(history, em.log_likelihoods)
    rng = np.random.default_rng(1)
    post = {"theta": rng.normal(size=(2, 7)), "noise": rng.gamma(2.0, size=(2, 7, 3))}
    idata = _idata(post, {"sdessm_em": json.dumps({"theta": 0.1})})
    assert cli._write_results(str(tmp_path / "nc"), {"posterior.nc": idata}, "t", []) is None
    back = az.from_netcdf(tmp_path / "nc" / "posterior.nc")
    for k, v in post.items():
        np.testing.assert_array_equal(back["posterior"][k].values, v)
    assert back["posterior"].attrs["sdessm_em"] == idata["posterior"].attrs["sdessm_em"]


def test_models_lists_the_zoo(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(available())


def test_demo_user_errors_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["demo", "--out", str(blocker / "sub"), *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdessm: error: cannot write the output folder")
    assert blocker.read_text() == "not a folder"
    assert cli.main(["demo", "--model", "oscilator", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'oscilator'" in err[0]


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--dt", "-1"])
    assert exc.value.code == 2
    assert "must be > 0" in capsys.readouterr().err


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.npy"
    np.save(target, np.arange(3))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("interrupted")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["result.npy"]


def test_csv_round_trip_and_missing_cells(tmp_path):
    times = np.array([0.0, 0.1, 0.35, 0.4])  # irregular steps
    y = np.array([[1.0, np.nan], [2.5, 3.0], [np.nan, np.nan], [-1e-300, 7.0]])
    write_csv(tmp_path / "d.csv", times, y, ["a", "b"])
    t, got, names = read_csv(tmp_path / "d.csv")
    np.testing.assert_array_equal(t, times)
    np.testing.assert_array_equal(got, y)  # exact: repr round-trips floats
    assert names == ["a", "b"]
    (tmp_path / "e.csv").write_text("time, b ,a\n1, NA,2\n2,3,\n")
    t, got, names = read_csv(tmp_path / "e.csv", "time", ["a"])
    assert names == ["a"] and np.isnan(got[1, 0]) and got[0, 0] == 2.0


CSV_ERRORS = {
    "missing file": (None, "does not exist"),
    "unknown column": ("t,y\n0,1\n1,2\n", "has no column(s) ['z']"),
    "no time column": ("time,y\n0,1\n", "has no time column 't'"),
    "non-numeric cell": ("t,y\n0,1\n1,abc\n", "row 3, column 'y': 'abc' is not a number"),
    "non-increasing times": ("t,y\n0,1\n2,2\n2,3\n", "row 4: time 2 does not increase"),
    "empty time": ("t,y\n0,1\n,2\n", "row 3: the time column 't' is empty"),
    "infinite value": ("t,y\n0,1\n1,inf\n", "infinite value"),
    "binary": (b"\xff\xfe\x00\x81", "cannot read"),
    "header only": ("t,y\n", "has a header but no rows"),
}


@pytest.mark.parametrize("case", CSV_ERRORS)
def test_fit_user_errors_are_one_line(case, tmp_path, capsys):
    content, message = CSV_ERRORS[case]
    path = tmp_path / "data.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    extra = ["--columns", "z"] if case == "unknown column" else []
    code = cli.main(["fit", str(path), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sdessm: error: "), err
    assert message in err[0], err
    assert not (tmp_path / "out").exists()  # nothing half-written


def _sdessm(*args, cwd=None):
    """Run the `sdessm` command line in a fresh interpreter, as a user would."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "sdessm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def ou_csv(tmp_path_factory):
    """150 rows of the OU zoo model with 10% missing, written by `sdessm simulate`."""
    data = tmp_path_factory.mktemp("data") / "ou.csv"
    args = ["--model", "ou", "--n", "150", "--dt", "0.25", "--missing", "0.1", "--out", data]
    run = _sdessm("simulate", *args)
    assert run.returncode == 0, run.stderr
    return data


def test_simulate_then_fit_with_forecast(ou_csv, tmp_path):
    t, y, _ = read_csv(ou_csv)
    assert y.shape == (150, 1) and np.isnan(y).any() and np.allclose(np.diff(t), 0.25)
    out = tmp_path / "fit"
    run = _sdessm(
        "fit", ou_csv, "--model", "ou", "--objective", "map", "--forecast", 8, "--out", out
    )
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "params.json").read_text())
    assert set(results["params"]) == {"theta", "sigma", "u", "noise"}
    assert "<table" in (out / "report.html").read_text()
    assert (out / "forecast.png").read_bytes()[:8] == PNG_MAGIC
    # the forecast written is the forecast at the written estimate
    table = pd.read_csv(out / "forecast.csv")
    assert list(table.columns) == ["t", "y_mean", "y_sd", "y_lower", "y_upper"]
    np.testing.assert_allclose(table["t"], t[-1] + 0.25 * np.arange(1, 9))
    sde = OU.to_sde(**{k: jnp.asarray(v) for k, v in results["params"].items()})
    fc = sdessm.forecast(sde, y, t, table["t"].to_numpy())
    np.testing.assert_allclose(table["y_mean"], fc.obs_means[:, 0], rtol=1e-6)
    np.testing.assert_allclose(table["y_sd"] ** 2, fc.obs_covs[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(table["y_upper"] - table["y_mean"], 1.959964 * table["y_sd"])


def test_sample_with_posterior_predictive_forecast(ou_csv, tmp_path):
    out = tmp_path / "sample"
    quick = ["--chains", "1", "--warmup", "40", "--draws", "40", "--forecast", "5"]
    saved = tmp_path / "run.npz"
    run = _sdessm("sample", ou_csv, "--model", "ou", "--out", out, *quick, "--checkpoint", saved)
    assert run.returncode == 0, run.stderr
    with np.load(saved) as ckpt:  # the sampler's state and the 40 draws, to extend the run
        meta = json.loads(str(ckpt["meta"]))
    assert (meta["kind"], meta["num_draws"]) == ("NUTS", 40)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["posterior.nc", "summary.csv", "report.html", "posterior.png", "trace_rank.png"]
        + ["forecast.csv", "forecast.png"]
    )
    idata = az.from_netcdf(out / "posterior.nc")
    assert np.asarray(idata["posterior"]["theta"].values).shape == (1, 40)
    table = pd.read_csv(out / "forecast.csv")
    assert list(table.columns) == ["t", "y_mean", "y_median", "y_lower", "y_upper"]
    assert (table["y_lower"] < table["y_median"]).all()
    assert (table["y_median"] < table["y_upper"]).all()


def test_user_errors_from_a_fresh_interpreter(ou_csv, tmp_path):
    """One line on stderr, exit status 2, no traceback, nothing written."""
    run = _sdessm("fit", tmp_path / "nothing.csv", "--out", tmp_path / "no")
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1 and "does not exist" in err[0], err
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "{data}", "--model", "multivariate_ou"], "expects (T, p) = (150, 2)"),
        (["fit", "{data}", "--forecast", "0"], "argument --forecast: must be > 0, got 0"),
        (["sample", "{data}", "--model", "nonsense"], "unknown model"),
        (["data", "nonsense"], "unknown data set 'nonsense'"),
    ],
)
def test_fit_sample_data_user_errors(ou_csv, tmp_path, capsys, args, message):
    args = [a.format(data=ou_csv) for a in args]
    try:
        code = cli.main([*args, "--out", str(tmp_path / "no")])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err
    assert not (tmp_path / "no").exists()


def test_data_writes_the_shipped_csv(tmp_path, capsys):
    assert cli.main(["data"]) == 0
    listing = capsys.readouterr().out
    assert "sunspots" in listing and "public domain" in listing
    out = tmp_path / "s.csv"
    assert cli.main(["data", "sunspots", "--out", str(out)]) == 0
    t, y, names = read_csv(out, "year")
    assert names == ["sunspots"] and y.shape == (309, 1) and t[0] == 1700 and t[-1] == 2008


def test_console_script_runs():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "sdessm.cli", "models"], capture_output=True, text=True, check=True
    ).stdout
    assert "damped_oscillator" in out
