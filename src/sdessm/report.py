"""A self-contained HTML report: headings, text, notes, tables and figures embedded as PNG data.

A report is a title and a list of `(heading, content)` sections. Content may be a matplotlib
`Figure` (embedded as PNG, with the heading as its alternative text), a pandas `DataFrame`, a
`dict` (a two-column table of labels and values), a `Note` (a coloured box: a warning, a
success, or information), a `Pre` (preformatted text, e.g. an equation), a plain `str`
(paragraphs, split at blank lines) or a list of any of these, shown in order. The page needs no
network connection, no script and no file beside it.
"""

from __future__ import annotations

import base64
import html
import io
import platform
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from matplotlib.figure import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
table.facts th { text-align: left; }
table.facts td { text-align: left; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
.note { border-left: 0.35em solid; padding: 0.4em 0.8em; margin: 0.6em 0; }
.note.ok { border-color: #2e7d32; background: #edf7ee; }
.note.warning { border-color: #c77700; background: #fff6e5; }
.note.error { border-color: #b00020; background: #fdecee; }
.note.info { border-color: #1565c0; background: #eef4fc; }
"""

NOTE_KINDS = ("ok", "warning", "error", "info")


class Note(NamedTuple):
    """A highlighted box: `kind` is "ok", "warning", "error" or "info"."""

    kind: str
    text: str


class Pre(NamedTuple):
    """Preformatted text (monospace, whitespace kept)."""

    text: str


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _cell(value) -> str:
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def _content(heading: str, content) -> list[str]:
    if isinstance(content, list):
        return [part for item in content for part in _content(heading, item)]
    if isinstance(content, Figure):
        data = base64.b64encode(figure_png(content)).decode("ascii")
        return [f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{data}">']
    if isinstance(content, Note):
        if content.kind not in NOTE_KINDS:
            raise ValueError(f"`kind` of a Note must be one of {NOTE_KINDS}; got {content.kind!r}.")
        return [f'<div class="note {content.kind}">{html.escape(content.text)}</div>']
    if isinstance(content, Pre):
        return [f"<pre>{html.escape(content.text)}</pre>"]
    if isinstance(content, dict):
        rows = [f"<tr><th>{_cell(k)}</th><td>{_cell(v)}</td></tr>" for k, v in content.items()]
        return ['<table class="facts">', *rows, "</table>"]
    if hasattr(content, "to_html"):
        return [content.to_html(float_format=lambda v: f"{v:.4g}", na_rep="—")]
    paragraphs = [p.strip() for p in str(content).split("\n\n") if p.strip()]
    return [f"<p>{html.escape(p)}</p>" for p in paragraphs]


def render(title: str, sections: list[tuple[str, object]]) -> str:
    """HTML of a report: each section is `(heading, content)`, content as the module says.

    Examples:
        >>> page = render("t", [("Fit", Note("ok", "converged")), ("Data", {"rows": 3})])
        >>> '<div class="note ok">converged</div>' in page and "<td>3</td>" in page
        True
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.extend(_content(heading, content))
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path: str | Path, title: str, sections: list[tuple[str, object]]) -> None:
    """Write `render(title, sections)` to `path` (UTF-8)."""
    Path(path).write_text(render(title, sections), encoding="utf-8")


def versions() -> dict[str, str]:
    """The versions of sdessm and of what it computes with, for the record of a run."""
    out = {"Python": platform.python_version()}
    for name in ("sdessm", "jax", "jaxlib", "numpyro", "arviz", "numpy", "scipy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
