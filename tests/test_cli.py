"""The command line and atomic output, end to end in a temporary folder."""

import argparse
import csv
import importlib
import json
import os
import re

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from browser import BROWSER, render_in_browser
from sdessm.models import available, load

import sdessm
from sdessm import cli, runs
from sdessm.io import read_csv, write_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


OU = load("ou")
QUICK = ["--n", "60", "--chains", "1", "--warmup", "30", "--draws", "30"]


def _strict_json(text: str):
    """JSON as the standard has it: a bare NaN or Infinity fails."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_demo_writes_results_plots_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()  # an empty folder may be written
    assert cli.main(["demo", "--out", str(out), "--seed", "3", *QUICK]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "params.json",
            "em_history.csv",
            "posterior.nc",
            "report.html",
            "smoothed_observations.png",
            "smoothed_states.png",
            "em_history.png",
            "recovery.png",
            "trace_rank.png",
            "sdessm-output.json",
        ]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    manifest = _strict_json((out / "sdessm-output.json").read_text())
    assert manifest["written_by"] == "sdessm"
    assert sorted(manifest["files"]) == sorted(set(names) - {"sdessm-output.json"})
    results = _strict_json((out / "params.json").read_text())
    assert results["truth"]["omega"] == 2.0 and set(results["em"]["params"]) == set(
        results["truth"]
    )
    assert set(results["recovery"]) == {"noise", "omega", "sigma", "u", "zeta"}
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
    assert "<table" in page and "omega" in page and page.count("data:image/png;base64,") == 5
    assert "94% HDI" in page and "Versions" in page and "numpyro" in page
    idata = az.from_netcdf(out / "posterior.nc")
    assert json.loads(idata["posterior"].attrs["sdessm_truth"])["omega"] == 2.0
    printed = capsys.readouterr().out
    assert "r_hat" in printed and "omega" in printed and "report.html" in printed
    assert "94% HDI low" in printed


def test_saved_results_load_back_exactly(tmp_path, monkeypatch):
    """What `fit` and `demo` write (parameters, EM history, ArviZ data) reads back bit for bit."""
    from test_diagnostics import _idata

    fits = []
    real_fit_em = sdessm.fit_em

    def keep(*args, **kwargs):
        fits.append(real_fit_em(*args, **kwargs))
        return fits[-1]

    monkeypatch.setattr("sdessm.fit.fit_em", keep)
    times = np.arange(60) * 0.25
    sde = OU.to_sde(**{k: jnp.asarray(v) for k, v in OU.TRUE_PARAMS.items()})
    y = np.array(sdessm.simulate(jax.random.key(0), sde, times)[1])
    data = tmp_path / "d.csv"
    sdessm.io.write_csv(data, times, y, ["y"])
    out = tmp_path / "fit"
    assert cli.main(["fit", str(data), "--model", "ou", "--out", str(out)]) == 0
    em = fits[-1]  # the outer call (a NumPyro model is fitted through an inner one)
    saved = _strict_json((out / "params.json").read_text())
    for k, v in em.params.items():
        assert saved["params"][k] == float(v)  # JSON keeps every bit of a float64
    assert saved["log_likelihood"] == em.log_likelihood
    with open(out / "em_history.csv", newline="") as f:  # Python's float() is exact
        history = [float(row["log_likelihood"]) for row in csv.DictReader(f)]
    np.testing.assert_array_equal(history, em.log_likelihoods)
    rng = np.random.default_rng(1)
    post = {"theta": rng.normal(size=(2, 7)), "noise": rng.gamma(2.0, size=(2, 7, 3))}
    idata = _idata(post, {"sdessm_em": json.dumps({"theta": 0.1})})
    args = cli.build_parser().parse_args(["fit", "x.csv", "--out", str(tmp_path / "nc")])
    runs.write_results(args, {"posterior.nc": idata}, "t", [])
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
    assert len(err) == 1 and err[0].startswith(f"sdessm: error: cannot write --out {blocker}")
    assert blocker.read_text() == "not a folder"
    assert cli.main(["demo", "--model", "oscilator", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'oscilator'" in err[0]


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--dt", "-1"])
    assert exc.value.code == 2
    assert "must be a finite number > 0" in capsys.readouterr().err


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


@pytest.fixture(scope="module")
def fit_run(ou_csv):
    """`sdessm fit --objective map --forecast 8` on the OU data, in a fresh interpreter."""
    out = ou_csv.parent / "fit"
    run = _sdessm(
        "fit", ou_csv, "--model", "ou", "--objective", "map", "--forecast", 8, "--out", out
    )
    assert run.returncode == 0, run.stderr
    return out


def test_simulate_then_fit_with_forecast(ou_csv, fit_run):
    t, y, _ = read_csv(ou_csv)
    assert y.shape == (150, 1) and np.isnan(y).any() and np.allclose(np.diff(t), 0.25)
    out = fit_run
    results = _strict_json((out / "params.json").read_text())
    assert set(results["params"]) == {"theta", "sigma", "u", "noise"}
    assert results["data"]["rows"] == "150" and results["settings"]["--objective"] == "map"
    assert "<table" in (out / "report.html").read_text()
    assert (out / "forecast.png").read_bytes()[:8] == PNG_MAGIC
    # the forecast written is the forecast at the written estimate, every number exact
    table = pd.read_csv(out / "forecast.csv")
    assert list(table.columns) == ["t", "y_mean", "y_sd", "y_lower", "y_upper"]
    np.testing.assert_array_equal(table["t"], [t[-1] + 0.25 * k for k in range(1, 9)])
    sde = OU.to_sde(**{k: jnp.asarray(v) for k, v in results["params"].items()})
    fc = sdessm.forecast(sde, y, t, table["t"].to_numpy())
    np.testing.assert_allclose(table["y_mean"], fc.obs_means[:, 0], rtol=1e-12)
    np.testing.assert_allclose(table["y_sd"] ** 2, fc.obs_covs[:, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(table["y_upper"] - table["y_mean"], 1.959964 * table["y_sd"])
    with open(out / "em_history.csv", newline="") as f:  # Python's float() is exact
        history = [float(row["log_likelihood"]) for row in csv.DictReader(f)]
    assert history[-1] == results["log_likelihood"]
    # four sites, all identified; 150 rows, the missing ones not counted
    ic = results["information_criteria"]
    assert (ic["parameters"], ic["observations"]) == (4, int(np.sum(~np.isnan(y))))
    assert ic["aic"] == pytest.approx(2 * 4 - 2 * results["log_likelihood"], rel=1e-12)
    assert ic["bic"] == pytest.approx(
        4 * np.log(ic["observations"]) - 2 * results["log_likelihood"], rel=1e-12
    )
    assert "AIC, AICc, BIC" in (out / "report.html").read_text()
    # the residual checks of the written estimate, as sdessm.residual_tests gives them
    checks = results["residual_tests"]
    w = sdessm.innovations(sde, y, t).standardized
    expected = sdessm.residual_tests(w)
    assert checks["lags"] == list(expected.lags)
    assert checks["columns"]["y"]["ljung_box_p"] == pytest.approx(expected.ljung_box_p[0])
    assert checks["columns"]["y"]["jarque_bera_p"] == pytest.approx(expected.jarque_bera_p[0])
    assert (out / "residuals.png").read_bytes()[:8] == PNG_MAGIC
    for png in out.glob("*.png"):  # every picture decodes
        assert plt_imread(png).ndim == 3, png


def plt_imread(path):
    from matplotlib.image import imread

    return imread(path)


@pytest.fixture(scope="module")
def sample_run(ou_csv):
    """`sdessm sample --forecast 5 --checkpoint FILE`: 1 chain x (40 + 40), fresh interpreter."""
    out, saved = ou_csv.parent / "sample", ou_csv.parent / "run.npz"
    quick = ["--chains", "1", "--warmup", "40", "--draws", "40", "--forecast", "5"]
    run = _sdessm("sample", ou_csv, "--model", "ou", "--out", out, *quick, "--checkpoint", saved)
    assert run.returncode == 0, run.stderr
    return out, saved


def test_sample_with_posterior_predictive_forecast(sample_run):
    out, saved = sample_run
    with np.load(saved) as ckpt:  # the sampler's state and the 40 draws, to extend the run
        meta = json.loads(str(ckpt["meta"]))
    assert (meta["kind"], meta["num_draws"]) == ("NUTS", 40)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["posterior.nc", "summary.csv", "report.html", "posterior.png", "trace_rank.png"]
        + ["forecast.csv", "forecast.png", "sdessm-output.json"]
    )
    idata = az.from_netcdf(out / "posterior.nc")
    assert np.asarray(idata["posterior"]["theta"].values).shape == (1, 40)
    # one log density per observed time, and PSIS-LOO on them in the report
    assert idata["log_likelihood"]["y"].dims == ("chain", "draw", "time")
    loo = az.loo(idata)
    elpd = loo.elpd_loo if hasattr(loo, "elpd_loo") else loo.elpd
    assert f"{float(elpd):.6g}" in (out / "report.html").read_text()
    table = pd.read_csv(out / "forecast.csv")
    assert list(table.columns) == ["t", "y_mean", "y_median", "y_lower", "y_upper"]
    assert (table["y_lower"] < table["y_median"]).all()
    assert (table["y_median"] < table["y_upper"]).all()
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    theta = idata["posterior"]["theta"].values
    assert summary.loc["theta", "mean"] == pytest.approx(theta.mean(), rel=1e-12)
    assert {"hdi_low", "hdi_high", "r_hat", "ess_bulk"} <= set(summary.columns)


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")
def test_fit_report_renders_with_every_image_and_the_convergence_status(fit_run, tmp_path):
    seen = render_in_browser(fit_run / "report.html", tmp_path)
    assert int(seen["images"]) == 5 and seen["decoded"] == seen["images"]
    headings = seen["headings"].split("|")
    for expected in ("Result", "Data", "Model", "Estimates and standard errors", "Settings"):
        assert expected in headings
    assert "Versions" in headings and "EM progress" in headings
    assert re.search(r"note (ok|warning)", seen["notes"])  # the convergence status, coloured
    page = (fit_run / "report.html").read_text()
    assert "ou.csv" in page and "y" in page  # the data file and its column
    assert "EM ran" in page and re.search(r"(Converged: certified|Not converged)", page)
    assert "dx = F x dt + L dW" in page  # the model's equation


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")
def test_sample_report_renders_with_every_image_and_the_diagnostics(sample_run, tmp_path):
    out, _ = sample_run
    seen = render_in_browser(out / "report.html", tmp_path)
    assert int(seen["images"]) == 3 and seen["decoded"] == seen["images"]
    page = (out / "report.html").read_text()
    assert "94% highest-density interval" in page and "94% HDI" in page
    assert "R-hat" in page and "numpyro" in page
    assert re.search(r"note (ok|warning)", seen["notes"])


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
        (["fit", "{data}", "--forecast", "0"], "argument --forecast: must be >= 1, got 0"),
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


# --------------------------------------------------------------------------- refusals and bad input


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with `data.csv` (60 rows of the OU model) and a folder of the user's;
    fitting, sampling or simulating there fails the test: every refusal comes first."""
    monkeypatch.chdir(tmp_path)
    times = np.arange(60) * 0.25
    sde = OU.to_sde(**{k: jnp.asarray(v) for k, v in OU.TRUE_PARAMS.items()})
    write_csv("data.csv", times, np.array(sdessm.simulate(jax.random.key(0), sde, times)[1]), ["y"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    (tmp_path / "somefile").write_text("my file")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for module, name in (
        ("fit", "fit_em"),
        ("infer", "fit_nuts"),
        ("simulate", "simulate"),
        ("comparison", "fit_candidate"),
    ):
        monkeypatch.setattr(importlib.import_module(f"sdessm.{module}"), name, no_work)
    return tmp_path


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, argv) -> str:
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error: " in err[0], (code, err)
    return err[0]


REFUSALS = {
    "fit onto its input": ("fit data.csv --model ou --out data.csv", "is the input data.csv"),
    "fit onto its input, forced": (
        "fit data.csv --model ou --out data.csv --force",
        "is the input data.csv",
    ),
    "fit onto the current folder": ("fit data.csv --model ou --out . --force", "holds the input"),
    "fit onto a user's folder": ("fit data.csv --model ou --out mine", "did not write"),
    "fit onto a user's file": ("fit data.csv --model ou --out somefile", "is an existing file"),
    "fit onto its checkpoint's folder": (
        "fit data.csv --model ou --out keep --checkpoint keep/run.npz",
        "holds the input keep/run.npz",
    ),
    "sample onto its input": ("sample data.csv --model ou --out data.csv", "is the input"),
    "demo onto a user's folder": ("demo --out mine", "did not write"),
    "simulate onto a user's file": ("simulate --out data.csv", "is an existing file"),
    "data onto a user's file": ("data sunspots --out somefile", "is an existing file"),
    "no observed value": ("fit empty.csv --model ou", "has no observed value: every cell"),
    "a column with no value": (
        "fit halfempty.csv --model multivariate_ou",
        "column 'b' has no observed value; leave it out (--columns a)",
    ),
    "a value too large": ("fit huge.csv --model ou", "row 3, column 'y': 1e+308 is too large"),
    "a time too large": ("fit latetime.csv --model ou", "row 4: time 1e+200 is too large"),
    "missing fraction above 1": ("simulate --missing 2", "--missing: must lie in [0, 1), got 2"),
    "negative missing fraction": ("simulate --missing -0.5", "must lie in [0, 1), got -0.5"),
    "missing fraction of 1": ("demo --missing 1", "must lie in [0, 1), got 1"),
    "dt NaN": ("simulate --dt nan", "--dt: must be a finite number > 0, got nan"),
    "dt infinite": ("simulate --dt inf", "must be a finite number > 0, got inf"),
    "dt zero": ("demo --dt 0", "must be a finite number > 0, got 0"),
    "one time step": ("simulate --n 1", "--n: must be >= 2, got 1"),
    "no time step": ("demo --n 0", "--n: must be >= 2, got 0"),
    "no EM iteration": ("fit data.csv --iters 0", "--iters: must be >= 1, got 0"),
    "model file without TRUE_PARAMS, simulated": (
        "simulate --model fit_only.py --out new.csv",
        "needs TRUE_PARAMS and to_sde in the model file fit_only.py",
    ),
    "model file that fails to import": (
        "fit data.csv --model broken.py",
        "model file broken.py failed to load: NameError",
    ),
    "an order that is not a number": (
        "fit data.csv --model carma:x",
        "--model carma:x: the orders",
    ),
    "an order on a model without orders": ("sample data.csv --model ou:2", "ou takes no orders"),
    "CARMA(0, 0)": ("simulate --model carma:0 --out new.csv", "needs p >= 1 and 0 <= q < p"),
    "CARMA q >= p": ("demo --model carma:2:2", "--model carma:2:2: CARMA(p, q) needs p >= 1"),
    "compare, a bad order": (
        "compare data.csv --models ou,carma:3:3",
        "--models carma:3:3: CARMA(p, q) needs p >= 1 and 0 <= q < p; got p = 3, q = 3.",
    ),
    "compare, one model": ("compare data.csv --models ou", "must name two models or more"),
    "compare, a model twice": ("compare data.csv --models ou,carma,ou", "names ou twice"),
    "compare, an unknown model": ("compare data.csv --models ou,oo", "unknown model 'oo'"),
    "compare onto a user's folder": (
        "compare data.csv --models ou,carma --out mine",
        "did not write",
    ),
    "a driven model without --inputs": ("fit driven.csv --model driven_ou", "--inputs v"),
    "--inputs on a model that takes none": (
        "fit driven.csv --model ou --inputs v",
        "model ou takes no known inputs",
    ),
    "an unknown input column": (
        "fit driven.csv --model driven_ou --inputs w",
        "has no column(s) ['w'] named by --inputs",
    ),
    "an empty input cell": (
        "fit gappy.csv --model driven_ou --inputs v",
        "row 3: the input column 'v' is empty",
    ),
    "a column both data and input": (
        "fit driven.csv --model driven_ou --columns y,v --inputs v",
        "named by both --columns and --inputs",
    ),
    "a forecast without future inputs": (
        "fit driven.csv --model driven_ou --inputs v --forecast 3",
        "needs --future-inputs FILE",
    ),
    "too few future inputs": (
        "sample driven.csv --model driven_ou --inputs v --forecast 5 --future-inputs future.csv",
        "has 2 rows; --forecast 5 needs 5",
    ),
    "future inputs before the data's end": (
        "fit driven.csv --model driven_ou --inputs v --forecast 2 --future-inputs past.csv",
        "is not after the data's last time",
    ),
    "fit onto its future inputs": (
        "fit driven.csv --model driven_ou --inputs v --forecast 2 --future-inputs future.csv "
        "--out future.csv",
        "is the input future.csv",
    ),
    "compare, a model that takes no inputs": (
        "compare driven.csv --models driven_ou,ou --inputs v",
        "model ou takes no known inputs",
    ),
    "compare onto its model file": (
        "compare data.csv --models ou,fit_only.py --out fit_only.py",
        "is the input fit_only.py",
    ),
}

FIT_ONLY_MODEL = '''"""OU without TRUE_PARAMS or to_sde: enough to fit."""
import jax.numpy as jnp, numpyro, numpyro.distributions as dist
from sdessm.params import SDEParams
from sdessm.ppl import LTISDE

def model(times, y=None):
    theta = numpyro.sample("theta", dist.LogNormal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    sde = SDEParams(F=-theta * jnp.eye(1), L=sigma * jnp.eye(1), H=jnp.eye(1), u=jnp.zeros(1),
                    R=noise**2 * jnp.eye(1), mu1=jnp.zeros(1),
                    P1=sigma**2 / (2 * theta) * jnp.eye(1))
    numpyro.sample("y", LTISDE(*sde, times=times), obs=y)
'''


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_before_any_work_in_one_line(workdir, capsys, case):
    argv, message = REFUSALS[case]
    (workdir / "empty.csv").write_text("t,y\n0,\n1,\n2,\n")
    (workdir / "halfempty.csv").write_text("t,a,b\n0,1,\n1,2,\n2,3,\n")
    (workdir / "huge.csv").write_text("t,y\n0,1\n1,1e308\n2,3\n")
    (workdir / "latetime.csv").write_text("t,y\n0,1\n1,2\n1e200,3\n")
    (workdir / "fit_only.py").write_text(FIT_ONLY_MODEL)
    (workdir / "broken.py").write_text("model = undefined_name\n")
    (workdir / "driven.csv").write_text("t,y,v\n0,1,0\n1,2,1\n2,3,1\n3,2,0\n")
    (workdir / "gappy.csv").write_text("t,y,v\n0,1,0\n1,2,\n2,3,1\n")
    (workdir / "future.csv").write_text("t,v\n4,1\n5,0\n")
    (workdir / "past.csv").write_text("t,v\n3,1\n5,0\n")
    before = _snapshot(workdir)
    line = _one_line_error(capsys, argv.split())
    assert message in line, line
    assert _snapshot(workdir) == before  # nothing replaced, removed or added
    assert not [p for p in workdir.iterdir() if p.name.startswith(".")]


def test_force_replaces_a_file_that_is_not_an_input(tmp_path):
    (tmp_path / "old.csv").write_text("t,y\nmine\n")
    argv = ["simulate", "--model", "ou", "--n", "20", "--out", str(tmp_path / "old.csv")]
    assert cli.main([*argv, "--force"]) == 0
    times, y, _ = read_csv(tmp_path / "old.csv")
    assert y.shape == (20, 1)


def test_simulated_times_are_the_decimal_grid(tmp_path):
    """`--dt 0.1` writes 0.3, not 0.30000000000000004: the float nearest each k dt, in its
    shortest form, which reads back exactly."""
    from decimal import Decimal

    out = tmp_path / "d.csv"
    assert (
        cli.main(["simulate", "--model", "ou", "--n", "40", "--dt", "0.1", "--out", str(out)]) == 0
    )
    cells = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert cells == [repr(float(Decimal(k) * Decimal("0.1"))) for k in range(40)]
    assert "0.3" in cells and max(map(len, cells)) <= 4


@pytest.mark.parametrize("seed", range(3))
def test_decimal_grid_is_the_nearest_float(seed):
    from decimal import Decimal

    from sdessm.io import decimal_grid

    rng = np.random.default_rng(seed)
    for _ in range(50):
        start = float(f"{rng.uniform(-1e4, 1e4):.{rng.integers(0, 6)}f}")
        step = float(f"{rng.uniform(1e-4, 10):.{rng.integers(1, 7)}g}")
        got = decimal_grid(start, step, 30, first=int(rng.integers(0, 3)))
        first = int(round((got[0] - start) / step))
        expected = [
            float(Decimal(repr(start)) + (first + k) * Decimal(repr(step))) for k in range(30)
        ]
        np.testing.assert_array_equal(got, expected)
    tiny = decimal_grid(0.0, 1e-30, 3)  # past the exact integer shortcut
    np.testing.assert_array_equal(tiny, [0.0, 1e-30, 2e-30])


def test_every_option_has_help_and_shows_its_default():
    from test_docs import HOOKS

    parser = cli.build_parser()
    for name, sub in HOOKS.subcommands(parser).items():
        text = sub.format_help()
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            assert action.help, f"sdessm {name} {action.option_strings}: no help"
            if action.option_strings and action.default is not None:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action)
    fit_help = " ".join(HOOKS.subcommands(parser)["fit"].format_help().split())
    assert "path to a model file" in fit_help and "--psd" in fit_help


def test_model_file_without_simulation_parts_fits(workdir, monkeypatch, capsys):
    """`fit` and `sample` need only `model` from a model file (fitting such a file is tested in
    test_docs.py); `simulate` names what it lacks (REFUSALS)."""
    (workdir / "fit_only.py").write_text(FIT_ONLY_MODEL)
    reached = []

    def stop(model, *args, **kwargs):
        reached.append(model.__module__)
        raise FloatingPointError("stop here")

    monkeypatch.setattr(importlib.import_module("sdessm.fit"), "fit_em", stop)
    monkeypatch.setattr(importlib.import_module("sdessm.infer"), "fit_nuts", stop)
    assert cli.main(["fit", "data.csv", "--model", "fit_only.py"]) == 1
    assert cli.main(["sample", "data.csv", "--model", "fit_only.py"]) == 1
    assert reached == ["sdessm_user_model_fit_only"] * 2


def test_psd_option_reaches_the_fit(workdir, monkeypatch, capsys):
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise FloatingPointError("the objective is nan")

    monkeypatch.setattr("sdessm.fit.fit_em", fake)
    code = cli.main(["fit", "data.csv", "--model", "ou", "--psd", "nearest", "--iters", "7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (seen["psd"], seen["num_iters"]) == ("nearest", 7)
    # a failed computation: one line, exit status 1, nothing written
    assert code == 1 and len(err) == 1 and err[0].startswith("sdessm: error: EM failed:"), err
    assert not (workdir / "fit-output").exists()

    def not_psd(*args, **kwargs):
        raise sdessm.NotPSDError("Q is not PSD; pass psd='nearest' ...", None, np.diag([1, -1]))

    monkeypatch.setattr("sdessm.fit.fit_em", not_psd)
    code = cli.main(["fit", "data.csv", "--model", "unconstrained"])
    err = capsys.readouterr().err.strip().splitlines()
    # the advice names the command line's option, not the Python argument
    assert code == 1 and len(err) == 1 and "--psd nearest" in err[0], err
    assert "psd='nearest'" not in err[0]


def test_unconstrained_model_fits_and_samples_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "u.csv"
    assert cli.main(["simulate", "--model", "unconstrained", "--n", "50", "--out", str(data)]) == 0
    out = tmp_path / "fit"
    argv = ["fit", str(data), "--model", "unconstrained", "--iters", "3", "--psd", "nearest"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    saved = _strict_json((out / "params.json").read_text())
    assert np.shape(saved["params"]["F"]) == (2, 2)
    # F, L and H all free: not identified, so no standard errors, and the reason says so
    assert saved["standard_errors"]["F"] == [[None, None], [None, None]]
    assert "not positive definite" in saved["standard_errors_note"]
    page = (out / "report.html").read_text()
    assert "What the data identify" in page and "Re eig F" in page
    out = tmp_path / "sample"
    argv = ["sample", str(data), "--model", "unconstrained", "--chains", "1"]
    assert cli.main([*argv, "--warmup", "10", "--draws", "10", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert "Re eig F[0]" in summary.index and np.isfinite(summary["mean"]).all()


# --------------------------------------------------------------------------- model orders, compare

ORDERS = {
    "carma": ("carma", {}),
    "carma:3": ("carma", {"p": 3, "q": 0}),
    "carma:3:1": ("carma", {"p": 3, "q": 1}),
    "carma:1": ("carma", {"p": 1, "q": 0}),
    "ou": ("ou", {}),
}

BAD_ORDERS = {
    "carma:x": "--model carma:x: the orders after the model's name must be whole numbers",
    "carma:": "--model carma:: the orders after the model's name must be whole numbers",
    "carma:2.5": "whole numbers, as in carma:3 or carma:3:1; got '2.5'",
    "carma:0": "--model carma:0: CARMA(p, q) needs p >= 1 and 0 <= q < p; got p = 0, q = 0.",
    "carma:-1": "--model carma:-1: CARMA(p, q) needs p >= 1",
    "carma:3:3": "--model carma:3:3: CARMA(p, q) needs p >= 1 and 0 <= q < p; got p = 3, q = 3.",
    "carma:2:5": "got p = 2, q = 5",
    "carma:3:1:1": "--model carma:3:1:1: the model carma takes at most 2 orders (p, q); got 3.",
    "ou:2": "--model ou:2: the model ou takes no orders; give ou.",
    "oscilator:2": "unknown model 'oscilator'",
}


@pytest.mark.parametrize("spec", ORDERS)
def test_model_orders_become_model_kwargs(spec):
    name, kwargs = ORDERS[spec]
    module, got = runs.resolve_model(spec, "fit")
    assert module is load(name) and got == kwargs


@pytest.mark.parametrize("spec", BAD_ORDERS)
def test_bad_model_orders_are_refused_naming_the_option(spec):
    with pytest.raises(ValueError) as err:
        runs.resolve_model(spec, "fit")
    assert BAD_ORDERS[spec] in str(err.value)


def test_model_orders_reach_the_fit_the_sampler_and_the_simulation(workdir, monkeypatch, capsys):
    seen = []

    def fake(*args, **kwargs):
        seen.append(kwargs.get("model_kwargs"))
        raise FloatingPointError("stop here")

    monkeypatch.setattr("sdessm.fit.fit_em", fake)
    monkeypatch.setattr("sdessm.infer.fit_nuts", fake)
    assert cli.main(["fit", "data.csv", "--model", "carma:3:1"]) == 1
    assert cli.main(["sample", "data.csv", "--model", "carma:3"]) == 1
    assert cli.main(["fit", "data.csv", "--model", "carma"]) == 1  # the model's default orders
    assert seen == [{"p": 3, "q": 1}, {"p": 3, "q": 0}, None]
    simulate_module = importlib.import_module("sdessm.simulate")
    monkeypatch.setattr(simulate_module, "simulate", sdessm.simulate)  # lift the workdir's ban
    out = str(workdir / "c3.csv")
    assert cli.main(["simulate", "--model", "carma:3", "--n", "30", "--out", out]) == 0
    assert "'lam': 0.5" in capsys.readouterr().out  # simulated at carma.true_params(3, 0)
    _, y, _ = read_csv(workdir / "c3.csv")
    assert y.shape == (30, 1) and np.isfinite(y).all()


def test_driven_model_from_the_command_line(tmp_path, capsys):
    """simulate writes a driven model's input beside the data; fit --inputs reads it back and
    gives what `fit_em` gives in Python with the same inputs; the forecast follows the future
    inputs' times."""
    data, out = tmp_path / "driven.csv", tmp_path / "fit"
    assert cli.main(["simulate", "--model", "driven_ou", "--n", "120", "--dt", "0.5",
                     "--out", str(data)]) == 0  # fmt: skip
    assert "fit with --inputs v" in capsys.readouterr().out
    times, table, names = read_csv(data)
    assert names == ["y", "v"]
    module = load("driven_ou")
    np.testing.assert_array_equal(table[:, 1:], module.example_inputs(times))
    future = tmp_path / "future.csv"
    future.write_text("t,v\n" + "".join(f"{60 + 0.7 * k},{k % 2}\n" for k in range(1, 5)))
    argv = ["fit", str(data), "--model", "driven_ou", "--inputs", "v", "--out", str(out)]
    assert cli.main([*argv, "--forecast", "3", "--future-inputs", str(future)]) == 0
    printed = capsys.readouterr().out
    assert "driven by ['v']" in printed and "b[0]" in printed and "d[0]" in printed
    saved = _strict_json((out / "params.json").read_text())
    em = sdessm.fit_em(module.model, table[:, :1], times, model_kwargs={"inputs": table[:, 1:]},
                       progress=False)  # fmt: skip
    for name in ("b", "d", "theta"):
        np.testing.assert_allclose(saved["params"][name], em.params[name], rtol=1e-8)
    assert saved["settings"]["--inputs"] == "v"
    forecast = pd.read_csv(out / "forecast.csv")
    np.testing.assert_allclose(forecast["t"], [60.7, 61.4, 62.1])
    want = sdessm.forecast(em.sde, table[:, :1], times, forecast["t"].to_numpy(),
                           inputs=table[:, 1:], future_inputs=[[1.0], [0.0], [1.0]])  # fmt: skip
    np.testing.assert_allclose(forecast["y_mean"], np.asarray(want.obs_means)[:, 0], rtol=1e-6)
