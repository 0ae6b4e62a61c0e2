"""A self-contained HTML report: headings, text, tables and figures embedded as PNG data."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from matplotlib.figure import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; }
"""


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def render(title: str, sections: list[tuple[str, object]]) -> str:
    """HTML of a report: each section is `(heading, content)` with content a `Figure`, a pandas
    DataFrame, or text (shown preformatted)."""
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, Figure):
            data = base64.b64encode(figure_png(content)).decode("ascii")
            parts.append(f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{data}">')
        elif hasattr(content, "to_html"):
            parts.append(content.to_html(float_format=lambda v: f"{v:.4g}"))
        else:
            parts.append(f"<pre>{html.escape(str(content))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path: str | Path, title: str, sections: list[tuple[str, object]]) -> None:
    """Write `render(title, sections)` to `path` (UTF-8)."""
    Path(path).write_text(render(title, sections), encoding="utf-8")
