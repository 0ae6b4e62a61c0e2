"""Reports rendered by headless Chromium, as a reader sees them.

`render_in_browser` loads a copy of a report with a small script that, once the page has loaded,
records in the page how many images the browser decoded, the kinds of its notes and its section
headings; Chromium prints the page (`--dump-dom`) and the caller reads them back. Tests that use
it are skipped, saying why, where no Chromium is installed (`apt-get install chromium`; the CI
script installs it).
"""

import re
import shutil
import subprocess

BROWSER = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)

_PROBE = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const decoded = images.filter(img => img.complete && img.naturalWidth > 0).length;
  const out = document.createElement("div");
  out.id = "probe";
  out.dataset.images = images.length;
  out.dataset.decoded = decoded;
  out.dataset.notes = [...document.querySelectorAll(".note")].map(n => n.className).join(" ");
  out.dataset.headings = [...document.querySelectorAll("h2")].map(h => h.textContent).join("|");
  document.body.appendChild(out);
});
</script>
"""


def render_in_browser(report, tmp_path) -> dict:
    """Load the report in Chromium and return what the probe saw."""
    page = report.read_text()
    assert page.count("<script") == 0  # the report itself runs no code
    probe = tmp_path / f"probe-{report.parent.name}.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    run = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<div id="probe"([^>]*)>', run.stdout)
    assert found, f"the page did not load in {BROWSER}: {run.stderr[-2000:]}"
    return dict(re.findall(r'data-(\w+)="([^"]*)"', found.group(1)))
