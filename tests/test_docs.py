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
