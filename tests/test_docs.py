"""The documentation covers the package: an API page per public module, the whole command line.

The site itself is built by `make docs` (`mkdocs build --strict`); these checks are the fast part.
"""

import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

from sdessm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = (ROOT / "mkdocs.yml").read_text()


def _load_hooks():
    spec = importlib.util.spec_from_file_location("sdessm_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _load_hooks()


def _public_modules() -> list[str]:
    """Every module of src/sdessm not starting with "_", and the zoo; the command line has its
    own page (cli.md)."""
    names = [
        info.name
        for info in pkgutil.iter_modules([str(ROOT / "src" / "sdessm")])
        if not info.name.startswith("_") and info.name != "cli"
    ]
    return sorted(names + ["models"])


def test_public_modules_found():
    assert {"params", "kalman", "em", "models"} <= set(_public_modules())


@pytest.mark.parametrize("name", _public_modules())
def test_every_public_module_has_an_api_page_in_the_nav(name):
    page = DOCS / "api" / f"{name}.md"
    assert page.is_file(), f"docs/api/{name}.md is missing"
    # the zoo lives in models/ and ships as sdessm.models: its page documents `models`
    target = "models" if name == "models" else f"sdessm.{name}"
    assert re.search(rf"^::: {re.escape(target)}\s*$", page.read_text(), re.M), page
    assert re.search(rf"^\s*- sdessm\.{name}: api/{name}\.md\s*$", MKDOCS_YML, re.M), (
        f"api/{name}.md is not in the nav of mkdocs.yml"
    )


def test_top_level_api_page():
    assert re.search(r"^::: sdessm\s*$", (DOCS / "api" / "index.md").read_text(), re.M)
    assert re.search(r"^\s*- sdessm: api/index\.md\s*$", MKDOCS_YML, re.M)


def test_cli_reference_has_every_subcommand():
    text = HOOKS.cli_reference()
    names = list(HOOKS.subcommands(build_parser()))
    assert {"demo", "models", "simulate", "fit", "sample"} <= set(names)
    assert "usage: sdessm [-h]" in text
    for name in names:
        assert f"### `sdessm {name}`" in text
        assert f"usage: sdessm {name} " in text
    # a fixed width, whatever the terminal
    assert max(len(line) for line in text.splitlines()) <= int(HOOKS.COLUMNS)


def test_cli_page_has_the_placeholder():
    assert HOOKS.PLACEHOLDER in (DOCS / "cli.md").read_text()
    assert "hooks:\n  - docs/hooks.py" in MKDOCS_YML


# ------------------------------------------------------------------ "Write your own model"
#
# Every Python block of docs/own-model.md is a snippet of a file in docs/examples/ (included by
# pymdownx.snippets), and the tests below run each of those files: the page shows code that runs.

OWN_MODEL = DOCS / "own-model.md"
EXAMPLES = DOCS / "examples"
#: The files the page includes, each exercised by a test below.
TESTED_EXAMPLES = {
    "exponential_decay.py",  # test_own_model_example_fits, and by the scripts
    "fit_exponential_decay.py",  # test_own_model_example_scripts (slow)
    "sample_exponential_decay.py",  # test_own_model_example_scripts (slow)
    "mistakes.py",  # test_own_model_mistakes_give_the_errors_shown
}
SNIPPET = re.compile(r'^--8<-- "docs/examples/(?P<file>[\w.]+?)(?::(?P<section>\w+))?"$')


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def _run_example(name: str, monkeypatch, init_globals: dict | None = None) -> dict:
    """Run `docs/examples/<name>` from the repository root (as the page says) and return its
    globals."""
    import runpy

    monkeypatch.chdir(ROOT)
    return runpy.run_path(str(EXAMPLES / name), init_globals=init_globals)


def test_own_model_python_blocks_are_tested_example_files():
    text = OWN_MODEL.read_text()
    blocks = _code_blocks(text, "python")
    assert blocks, "docs/own-model.md shows no Python"
    included = set()
    for block in blocks:
        match = SNIPPET.match(block.strip())
        assert match, f"a Python block of docs/own-model.md is no docs/examples/ snippet:\n{block}"
        path = EXAMPLES / match["file"]
        assert path.is_file(), path
        if match["section"]:
            source = path.read_text()
            for end in ("start", "end"):
                assert f"# --8<-- [{end}:{match['section']}]" in source, (path, match["section"])
        included.add(match["file"])
    assert included == TESTED_EXAMPLES
    assert '```python\n--8<-- "docs/examples/exponential_decay.py"\n```' in text


#: Standard errors of the EM estimates of the page's model from 150 readings 2 minutes apart
#: (the observed information at the fit the page shows): what that much data determines.
STANDARD_ERRORS_T150 = {"tau": 3.7, "outdoor": 20.0, "excess0": 37.0, "sigma": 0.94, "noise": 1.1}
#: Estimate minus truth, in those standard errors, that the fit tests accept: with normal errors
#: 4 of them fail once in about 16 000 per site (and the seed is fixed).
MAX_STANDARD_ERRORS = 4.0


def test_own_model_example_fit_script(monkeypatch, capsys):
    """The page's fit script as the page runs it: its model file loaded by path, 150 readings
    simulated and fitted by EM from the prior medians. It prints what the page shows, and the
    estimates lie within 4 standard errors of the truth. (The NUTS script continues this session;
    its 2 x 1000 draws are left out of the suite for time.)"""
    ns = _run_example("fit_exponential_decay.py", monkeypatch)
    printed = capsys.readouterr().out
    page = OWN_MODEL.read_text()
    for line in printed.strip().splitlines():
        assert line in page, f"docs/own-model.md does not show the printed line {line!r}"
    em, se, truth = ns["em"], ns["se"], ns["truth"]
    assert em.converged and em.num_iters < 200
    assert set(em.params) == set(truth) == set(STANDARD_ERRORS_T150)
    for name, value in em.params.items():
        assert float(se[name]) == pytest.approx(STANDARD_ERRORS_T150[name], rel=0.05), name
        z = (float(value) - truth[name]) / float(se[name])
        assert abs(z) < MAX_STANDARD_ERRORS, (name, float(value), truth[name], float(se[name]))


def _mistakes_module():
    spec = importlib.util.spec_from_file_location("sdessm_docs_mistakes", EXAMPLES / "mistakes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decay_data():
    """150 readings of a clean decay from 1320 to 420 ppm, 2 minutes apart: `(times, y)`."""
    import numpy as np

    times = 2.0 * np.arange(150)
    return times, (420.0 + 900.0 * np.exp(-times / 45.0))[:, None]


def test_own_model_mistakes_give_the_errors_shown():
    """Each broken model of docs/examples/mistakes.py (and a `y` of the wrong shape) raises, from
    `fit_em`, exactly the error docs/own-model.md shows."""
    from sdessm.models import load

    import sdessm

    mistakes = _mistakes_module()
    page = OWN_MODEL.read_text()
    times, y = _decay_data()
    cases = [(getattr(mistakes, n), y) for n in dir(mistakes) if n.startswith("model_")]
    assert len(cases) == 6
    cases.append((load(EXAMPLES / "exponential_decay.py").model, y[:, 0]))
    for model, data in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            sdessm.fit_em(model, data, times, num_iters=1, progress=False)
        shown = f"{type(info.value).__name__}: {info.value}"
        assert shown in page, f"docs/own-model.md does not show {shown!r}"


def test_own_model_command_line_error_shown(tmp_path, capsys):
    """A CSV file with a second value column, given to `sdessm fit` with the page's model."""
    from sdessm.cli import main

    times, y = _decay_data()
    rows = ["t,co2,humidity", *(f"{t},{v},45.0" for t, v in zip(times, y[:, 0], strict=True))]
    data = tmp_path / "two.csv"
    data.write_text("\n".join(rows) + "\n")
    model = str(EXAMPLES / "exponential_decay.py")
    assert main(["fit", str(data), "--model", model, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("sdessm: error: ")
    assert error in OWN_MODEL.read_text(), error


# ------------------------------------------------------------------ no network to render
#
# The site must render without a network connection: no script or stylesheet from the network,
# and MathJax from the installed `django-static-mathjax` (docs extra), copied in by the hook.

NETWORK_ASSET = re.compile(
    r"""<script[^>]*\bsrc=["']?(https?:)?//"""
    r"""|<link[^>]*\bhref=["']?(https?:)?//"""
    r"""|@import\s+(url\()?["']?(https?:)?//"""
    r"""|url\(["']?(https?:)?//""",
    re.I,
)


def _yaml_list(key: str) -> list[str]:
    """The entries of a top-level list `key:` of mkdocs.yml (`- item  # comment` lines)."""
    match = re.search(rf"^{key}:\n((?:[ \t]+-.*\n?)*)", MKDOCS_YML, re.M)
    if match is None:
        return []
    return [re.sub(r"\s+#.*$", "", line.strip()[1:]).strip() for line in match[1].splitlines()]


def test_docs_load_no_script_or_stylesheet_from_the_network():
    assets = _yaml_list("extra_javascript") + _yaml_list("extra_css")
    assert "javascripts/mathjax.js" in assets
    for asset in assets:
        assert not re.match(r"^([a-z]+:)?//", asset, re.I), f"mkdocs.yml loads {asset} remotely"
        assert (DOCS / asset).is_file() or asset.startswith(HOOKS.MATHJAX_SITE_DIR + "/"), asset
    for page in sorted(DOCS.rglob("*.md")):
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not NETWORK_ASSET.search(line), f"{page.relative_to(ROOT)}:{number}: {line}"
    # the site's own scripts and stylesheets name no URL at all
    for path in sorted([*DOCS.rglob("*.js"), *DOCS.rglob("*.css")]):
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", path.read_text()), path
    assert re.search(r"^theme:\n(?:  .*\n)*?  font: false\b", MKDOCS_YML, re.M)  # no font server


def test_bundled_mathjax_is_installed_and_loaded():
    try:
        files = HOOKS.mathjax_files()
    except ModuleNotFoundError as err:
        pytest.skip(f"{err} (only the docs extra installs it; `make test` does)")
    script = f"{HOOKS.MATHJAX_SITE_DIR}/{HOOKS.MATHJAX_SCRIPT}"
    assert script in _yaml_list("extra_javascript")
    # the configuration comes first: MathJax reads window.MathJax when it loads
    scripts = _yaml_list("extra_javascript")
    assert scripts.index("javascripts/mathjax.js") < scripts.index(script)
    assert files[script].is_file() and files[script].stat().st_size > 500_000
    uris = set(files)
    fonts = f"{HOOKS.MATHJAX_SITE_DIR}/output/chtml/fonts/woff-v2"
    assert f"{fonts}/MathJax_Main-Regular.woff" in uris
    assert f"{fonts}/MathJax_Math-Italic.woff" in uris
    extensions = f"{HOOKS.MATHJAX_SITE_DIR}/input/tex/extensions"
    assert {f"{extensions}/{name}.js" for name in ("ams", "boldsymbol", "physics")} <= uris
    # a few MB, not the whole 24 MB package
    assert sum(path.stat().st_size for path in files.values()) < 5_000_000
