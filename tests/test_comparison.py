"""Model comparison by EM: the choice on data with a known truth, the criteria against
`EMResult.information_criteria()` of fits made apart, and the rules of the choice on made-up
candidates."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sdessm.models import load

import sdessm
from sdessm.comparison import Candidate, choose, compare_models, fit_candidate, plot_comparison
from sdessm.io import write_csv
from sdessm.runs import simulate_model

OU, CARMA = load("ou"), load("carma")
#: The data of `sdessm simulate --model ou --n 150 --dt 0.25 --missing 0.1` (seed 0), as in
#: test_cli.py, so that the programs compiled for one are reused by the other.
T, DT, MISSING = 150, 0.25, 0.1
RTOL = 1e-9
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    times, _, y, _ = simulate_model(OU, OU.TRUE_PARAMS, T, DT, MISSING, 0)
    return times, y


@pytest.fixture(scope="module")
def comparison(data):
    times, y = data
    return compare_models([OU, (CARMA, {"p": 2, "q": 0})], y, times, progress=False)


def test_picks_the_true_model(comparison):
    table = comparison.table()
    assert list(table.index) == ["ou", "carma(p=2, q=0)"]
    assert comparison.choice == "ou" and table.loc["ou", "chosen"]
    assert table["converged"].all()  # chosen on BIC, not because the other is not certified
    assert table.loc["ou", "delta_bic"] == 0.0 and table.loc["carma(p=2, q=0)", "delta_bic"] > 2
    assert comparison.notes[0][0] == "ok" and comparison.notes[0][1].startswith("Chosen: ou")
    assert "evidence for ou" in comparison.why


def test_criteria_are_those_of_each_fit_made_apart(comparison, data):
    times, y = data
    table = comparison.table()
    for name, model, kwargs in [
        ("ou", OU.model, None),
        ("carma(p=2, q=0)", CARMA.model, {"p": 2, "q": 0}),
    ]:
        em = sdessm.fit_em(model, y, times, model_kwargs=kwargs, progress=False)
        ic = em.information_criteria()
        row = table.loc[name]
        assert (row["k"], row["n"]) == (ic["parameters"], ic["observations"])
        assert row["n"] == int(np.sum(~np.isnan(y)))
        for key in ("log_likelihood", "aic", "aicc", "bic"):
            assert row[key] == pytest.approx(ic[key], rel=RTOL), key
        assert row["converged"] == em.converged
        tests = sdessm.residual_tests(sdessm.innovations(em.sde, y, times).standardized)
        assert row["ljung_box_p"] == pytest.approx(tests.ljung_box_p[0, -1], rel=1e-6)
        assert row["jarque_bera_p"] == pytest.approx(tests.jarque_bera_p[0], rel=1e-6)
        assert row["heteroskedasticity_p"] == pytest.approx(tests.heteroskedasticity_p[0], rel=1e-6)
    assert table["delta_aic"].to_numpy() == pytest.approx(table["aic"] - table["aic"].min())


def test_plot_and_fits(comparison):
    fig = plot_comparison(comparison)
    assert len(fig.axes) == 2
    assert set(comparison.fits) == {"ou", "carma(p=2, q=0)"}
    assert isinstance(comparison.fits["ou"], sdessm.EMResult)


def _sdessm(*args):
    """The `sdessm` command line in a fresh interpreter, as a user runs it."""
    command = [sys.executable, "-m", "sdessm.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def _strict_json(text: str):
    """JSON as the standard has it: a bare NaN or Infinity fails."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))


def test_compare_command_end_to_end(data, comparison, tmp_path):
    """`sdessm compare` in a fresh interpreter: the OU data choose the OU model over CARMA(2, 0),
    and every file holds the same numbers. Here, after `comparison` fitted the same models to
    the same data, the command reuses the programs compiled there (the session's compilation
    cache), so that it costs seconds, not a minute."""
    csv, out = tmp_path / "ou.csv", tmp_path / "compare"
    write_csv(csv, *data, ["y"])
    run = _sdessm("compare", csv, "--models", "ou,carma:2", "--out", out)
    assert run.returncode == 0, run.stderr
    printed = run.stdout
    assert "[1/2] ou" in printed and "[2/2] carma:2" in printed and "Chosen: ou" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["comparison.csv", "comparison.json", "comparison.png", "report.html"]
        + ["residuals.png", "sdessm-output.json"]
    )
    table = pd.read_csv(out / "comparison.csv", index_col="model")
    saved = _strict_json((out / "comparison.json").read_text())
    assert saved["choice"] == "ou" and list(table.index) == ["ou", "carma:2"]
    assert saved["why"].startswith("Chosen: ou")
    for name, row in table.iterrows():
        assert saved["models"][name]["bic"] == row["bic"] and row["converged"]
        assert row["aic"] == pytest.approx(2 * row["k"] - 2 * row["log_likelihood"], rel=1e-12)
    assert table.loc["carma:2", "delta_bic"] > 0 and table.loc["ou", "delta_bic"] == 0
    # the numbers of the same comparison made in Python
    expected = comparison.table().rename(index={"carma(p=2, q=0)": "carma:2"})
    for column in ("log_likelihood", "aic", "bic", "delta_bic", "ljung_box_p"):
        assert table[column].to_numpy() == pytest.approx(expected[column].to_numpy(), rel=1e-9)
    assert set(saved["models"]["ou"]["params"]) == {"theta", "sigma", "u", "noise"}
    assert saved["settings"]["--models"] == "ou,carma:2"
    page = (out / "report.html").read_text()
    assert "Chosen: ou" in page and page.count("data:image/png;base64,") == 2
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC


def test_a_model_that_cannot_take_the_data_is_kept_with_its_reason(data):
    times, y = data  # one column; the 2-D OU expects two
    failed = fit_candidate(load("multivariate_ou").model, y, times, name="mou", progress=False)
    assert failed.failed and not failed.converged and failed.fit is None
    assert failed.convergence.startswith("failed: ") and "(T, p)" in failed.convergence
    assert np.isnan(failed.residuals["ljung_box_p"])


# ------------------------------------------------------------------------ the rules of the choice


def _fitted(name, bic, k, converged=True, aic=None, residuals=None, failed=False):
    """A made-up candidate: BIC, k, AIC (default: BIC less 3 k, as for n = e^5) and residual
    p-values (default: all 0.5)."""
    if failed:
        return Candidate(name, {}, False, "failed: the objective is nan", True)
    criteria = {
        "log_likelihood": -bic / 2,
        "parameters": k,
        "observations": 150,
        "aic": bic - 3.0 * k if aic is None else aic,
        "aicc": np.nan,
        "bic": bic,
    }
    p = dict.fromkeys(("ljung_box_p", "jarque_bera_p", "heteroskedasticity_p"), 0.5)
    verdict = "certified: ..." if converged else "not certified: flat along zeta"
    return Candidate(name, criteria, converged, verdict, residuals={**p, **(residuals or {})})


def test_lowest_bic_with_the_strength_of_evidence():
    result = choose([_fitted("a", 120.0, 4), _fitted("b", 100.0, 5), _fitted("c", 112.0, 6)])
    assert result.choice == "b"
    assert "the next, c, has BIC higher by 12: very strong evidence for b" in result.notes[0][1]
    assert [kind for kind, _ in result.notes] == ["ok", "info"]  # residuals pass
    table = result.table()
    assert table.loc["b", "chosen"] and table["delta_bic"].tolist() == [20.0, 0.0, 12.0]


def test_not_distinguishable_names_the_simpler_model():
    result = choose([_fitted("big", 100.0, 6), _fitted("small", 101.5, 4)])
    assert result.choice == "big"
    assert "not distinguishable by BIC" in result.notes[0][1]
    assert "small, with fewer parameters, is as good a choice" in result.notes[0][1]


def test_aic_disagreement_is_said():
    result = choose([_fitted("small", 100.0, 2, aic=96.0), _fitted("big", 104.0, 6, aic=92.0)])
    assert result.choice == "small"
    (aic_note,) = [text for kind, text in result.notes if text.startswith("AIC disagrees")]
    assert "it prefers big (AIC lower by 4)" in aic_note


def test_a_fit_not_certified_is_never_chosen_while_one_is():
    candidates = [
        _fitted("flat", 50.0, 7, converged=False),
        _fitted("certified", 100.0, 4),
        _fitted("broken", 0, 0, failed=True),
    ]
    result = choose(candidates)
    assert result.choice == "certified"
    assert "the only fit certified as a maximum" in result.notes[0][1]
    left_out = result.notes[-1][1]
    assert "flat (not certified: flat along zeta)" in left_out and "broken (failed:" in left_out
    table = result.table()
    assert list(table.index) == ["flat", "certified", "broken"]  # every model keeps its row
    assert table.loc["flat", "delta_bic"] == -50.0 and np.isnan(table.loc["broken", "bic"])
    assert table.loc["broken", "note"].startswith("failed:")


def test_without_a_certified_fit_the_choice_is_provisional_and_a_warning():
    result = choose([_fitted("a", 100.0, 4, converged=False), _fitted("b", 90.0, 5, False)])
    assert result.choice == "b" and result.notes[0][0] == "warning"
    assert "No fit is certified" in result.notes[0][1]
    nothing = choose([_fitted("a", 0, 0, failed=True)])
    assert nothing.choice is None and nothing.notes[0][0] == "warning"
    assert "a: failed: the objective is nan" in nothing.why


def test_failed_residual_checks_say_what_to_try():
    bad = {"ljung_box_p": 0.001, "heteroskedasticity_p": 0.01}
    result = choose([_fitted("a", 100.0, 4, residuals=bad), _fitted("b", 110.0, 4)])
    kind, text = result.notes[-1]
    assert kind == "warning" and text.startswith("The residuals of a fail at 5%")
    assert "Ljung-Box p = 0.001" in text and "more states" in text
    assert "variance" in text and "logarithm" in text and "Jarque-Bera" not in text


def test_compare_models_refuses_bad_arguments(data):
    times, y = data
    with pytest.raises(ValueError, match="name each of the 2 models once"):
        compare_models([OU, CARMA], y, times, names=["a", "a"])
    with pytest.raises(ValueError, match="name each of the 2 models once"):
        compare_models([OU, CARMA], y, times, names=["a"])
    with pytest.raises(ValueError, match="each of `models` must be"):
        compare_models([OU, (CARMA, 3)], y, times)
    with pytest.raises(ValueError, match="as a pair"):
        compare_models([OU, CARMA], y, times, model_kwargs={"p": 2})
    with pytest.raises(ValueError, match="is empty"):
        compare_models([], y, times)


def test_table_is_a_dataframe_with_every_column():
    table = choose([_fitted("a", 100.0, 4), _fitted("b", 103.0, 5)]).table()
    assert isinstance(table, pd.DataFrame) and table.index.name == "model"
    assert list(table.columns) == [
        "log_likelihood", "k", "n", "aic", "aicc", "bic", "delta_aic", "delta_bic", "converged",
        "ljung_box_p", "jarque_bera_p", "heteroskedasticity_p", "chosen", "note",
    ]  # fmt: skip


@pytest.mark.filterwarnings("ignore:Estimated shape parameter")  # 100 draws per model
def test_with_nuts_the_posteriors_are_compared_by_loo(data, comparison):
    """`nuts=` samples each certified fit and adds az.compare's numbers, computed here again
    from the stored posteriors."""
    import arviz as az

    times, y = data
    nuts = dict(num_warmup=50, num_samples=50, num_chains=2)
    models = [OU, (CARMA, {"p": 2, "q": 0})]
    result = compare_models(models, y, times, progress=False, nuts=nuts)
    assert result.choice == comparison.choice  # the choice stays the BIC's
    table = result.table()
    posteriors = {c.name: c.posterior for c in result.candidates}
    again = az.compare(posteriors).rename(columns={"elpd_loo": "elpd"})
    for name in posteriors:
        assert table.loc[name, "elpd_loo"] == pytest.approx(again.loc[name, "elpd"])
        assert table.loc[name, "loo_weight"] == pytest.approx(again.loc[name, "weight"])
    assert table["elpd_loo"].notna().all() and np.isfinite(table["elpd_loo_se"]).all()
    assert result.notes[-1][0] == "info" and "PSIS-LOO over the 2 sampled models" in result.why
    assert "leave_future_out" in result.why
