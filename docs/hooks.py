"""MkDocs hook: the command-line reference, generated from the real parser.

`cli_reference()` renders `sdessm --help` and the `--help` of every subcommand, taken from
`sdessm.cli.build_parser()` at a fixed terminal width, so `docs/cli.md` cannot drift from the
code. The build replaces the line `<!-- cli-help -->` of `docs/cli.md` with it.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager

PLACEHOLDER = "<!-- cli-help -->"
COLUMNS = "100"


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


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "cli.md":
        if PLACEHOLDER not in markdown:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"docs/cli.md lost its placeholder line {PLACEHOLDER}")
        markdown = markdown.replace(PLACEHOLDER, cli_reference())
    return markdown
