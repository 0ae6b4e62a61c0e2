"""MkDocs hooks: the command-line reference and the module map, generated from the code, and a
local MathJax.

`cli_reference()` renders `sdessm --help` and the `--help` of every subcommand, taken from
`sdessm.cli.build_parser()` at a fixed terminal width, so `docs/cli.md` cannot drift from the
code. The build replaces the line `<!-- cli-help -->` of `docs/cli.md` with it, and the line
`<!-- module-map -->` of `docs/architecture.md` with `module_map()`, a table of the package's
modules (lines, and the first sentence of each docstring).

`mathjax_files()` lists the part of MathJax 3 that the site needs to typeset its formulas, taken
from the package `django-static-mathjax` (the `docs` extra), and `on_files` adds them to the site
under `javascripts/mathjax/`, so that the pages render their mathematics without a network
connection. MathJax finds its fonts and extensions relative to the script it was loaded from,
so the files keep MathJax's own layout.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

PLACEHOLDER = "<!-- cli-help -->"
MODULE_MAP = "<!-- module-map -->"
COLUMNS = "100"

#: The distribution that ships MathJax 3 (its files under `mathjax/static/mathjax/`).
MATHJAX_DISTRIBUTION = "django-static-mathjax"
#: Where the site keeps its copy of MathJax; `extra_javascript` in mkdocs.yml loads
#: `MATHJAX_SITE_DIR/MATHJAX_SCRIPT`.
MATHJAX_SITE_DIR = "javascripts/mathjax"
#: MathJax's combined component: TeX and MathML input, CommonHTML output, the menu.
MATHJAX_SCRIPT = "tex-mml-chtml.js"
#: Folders of the es5 build that the combined component loads from its own location: the
#: CommonHTML fonts, and the TeX extensions it loads on first use of their macros (`autoload`,
#: `require`). The rest of the package (other outputs, speech, 24 MB in all) is not needed.
MATHJAX_FOLDERS = ("output/chtml/fonts/woff-v2", "input/tex/extensions")


@contextmanager
def _terminal_width(columns: str):
    """argparse wraps help at `$COLUMNS`: fix it while formatting."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = columns
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of `parser`, name -> subparser, in the order they were added."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def cli_reference() -> str:
    """Markdown: `sdessm --help`, then one section per subcommand with its `--help`."""
    from sdessm.cli import build_parser

    with _terminal_width(COLUMNS):
        parser = build_parser()
        blocks = [f"### `sdessm`\n\n```text\n{parser.format_help().rstrip()}\n```\n"]
        for name, sub in subcommands(parser).items():
            blocks.append(f"### `sdessm {name}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(blocks)


def module_map() -> str:
    """Markdown: a table of the modules of `src/sdessm`, their lines and their docstring's first
    sentence."""
    import ast

    package = Path(__file__).resolve().parent.parent / "src" / "sdessm"
    rows = ["| module | lines | role |", "|---|---|---|"]
    for path in sorted(package.glob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        role = (first.split(". ")[0].rstrip(".") + ".").replace("|", "\\|")
        rows.append(f"| `{path.name}` | {len(text.splitlines())} | {role} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    generated = {
        "cli.md": (PLACEHOLDER, cli_reference),
        "architecture.md": (MODULE_MAP, module_map),
    }
    if page.file.src_uri in generated:
        placeholder, render = generated[page.file.src_uri]
        if placeholder not in markdown:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"docs/{page.file.src_uri} lost its placeholder line {placeholder}")
        markdown = markdown.replace(placeholder, render())
    return markdown


def mathjax_root() -> Path:
    """The `es5` folder of the installed MathJax (`django-static-mathjax`).

    Raises:
        ModuleNotFoundError: the distribution is not installed.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(MATHJAX_DISTRIBUTION)
    except PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the documentation bundles MathJax from the package {MATHJAX_DISTRIBUTION!r}, which "
            "is not installed; install the docs extra: pip install -e '.[docs]'"
        ) from None
    return Path(dist.locate_file("mathjax/static/mathjax/es5"))


def mathjax_files() -> dict[str, Path]:
    """Site path -> installed file, for every MathJax file the site needs (and its licence)."""
    root = mathjax_root()
    files = {f"{MATHJAX_SITE_DIR}/{MATHJAX_SCRIPT}": root / MATHJAX_SCRIPT}
    for folder in MATHJAX_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                files[f"{MATHJAX_SITE_DIR}/{path.relative_to(root).as_posix()}"] = path
    files[f"{MATHJAX_SITE_DIR}/LICENSE"] = root.parent / "LICENSE"  # Apache 2.0
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"MathJax files missing from {root}: {missing}")
    return files


def on_files(files, config):
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    try:
        bundled = mathjax_files()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise PluginError(str(err)) from None
    for uri, path in bundled.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
