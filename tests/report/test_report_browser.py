"""The report pages in a real browser: headless Chromium, the network cut off, opens every page of
the default run's report and of a sweep's, and each must draw every chart it embeds with nothing
in the console (no script error, no failed load, no Vega warning) and no request leaving the
machine. The checker itself is checked first on pages that break those rules.

Chromium is Debian's `chromium` package (`make test` installs it where apt can; the test is
skipped, saying so, where it cannot). vl-convert's renders in tests/report/test_report_paper.py
check each chart's spec; this checks the pages as a reader's browser shows them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmpipe.report.render import render_report
from lmpipe.store.index import index_runs
from tests.report.test_report_paper import PAGES, default_run
from tests.report.test_report_sweep import make_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian package "
                                "chromium; `make test` installs it where apt can)")

# headless, no sandbox (root in CI), nothing of Chromium's own reaching out; every host name
# resolves to nothing, so a page that needs the network fails visibly in the console
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--log-level=0", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--virtual-time-budget=15000", "--window-size=1400,2400"]


@dataclass
class Page:
    dom: str                 # the DOM after the page's scripts ran
    console: list[str]       # every console message (log, warning, error, uncaught exception)
    requests: list[str]      # URLs the page asked the network for (Chromium's own left out)
    charts: int              # Vega views drawn (each has a `marks` canvas)
    embeds: int              # charts the page asks vega-embed to draw


def page_requests(net_log: Path) -> list[str]:
    """The URLs requested on behalf of a page (Chromium's own update and time checks have no
    initiating origin, a page's requests are keyed by the page's origin, here file://)."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"] if e["type"] == start
            and "file://" in e["params"].get("network_isolation_key", "")]


def open_page(html: Path, profile: Path) -> Page:
    """Load `html` in headless Chromium; its DOM, console, requests and the charts it drew."""
    net_log = profile.parent / "net-log.json"
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                             f"--log-net-log={net_log}", html.resolve().as_uri()],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return Page(dom=result.stdout, console=console, requests=page_requests(net_log),
                charts=result.stdout.count('class="marks"'),
                embeds=len(re.findall(r'vegaEmbed\("#', html.read_text(encoding="utf-8"))))


def screenshot(html: Path, png: Path, profile: Path) -> bytes:
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                    html.resolve().as_uri()], capture_output=True, timeout=180, check=True)
    return png.read_bytes()


def test_the_checker_sees_script_errors_and_network_loads(tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>no_such_function();</script></body></html>")
    fetching = tmp_path / "fetching.html"
    fetching.write_text('<html><head><script src="https://cdn.example.org/vega.js"></script>'
                        "</head><body></body></html>")
    page = open_page(broken, tmp_path / "profile")
    assert any("no_such_function is not defined" in line for line in page.console), page.console
    page = open_page(fetching, tmp_path / "profile")
    assert page.requests == ["https://cdn.example.org/vega.js"], page.requests


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    default = tmp_path_factory.mktemp("default")
    default_run(default / "runs")
    index_runs(default / "runs", default / "runs.duckdb")
    render_report(default / "runs.duckdb", default / "report")
    sweep = tmp_path_factory.mktemp("sweep")
    make_store(sweep / "runs.duckdb", steps=12)
    render_report(sweep / "runs.duckdb", sweep / "report")
    return {"default": default / "report", "sweep": sweep / "report"}


@pytest.mark.parametrize("store", ["default", "sweep"])
def test_every_page_draws_every_chart_offline_without_console_messages(
        reports: dict[str, Path], store: str, tmp_path: Path) -> None:
    drawn = 0
    for name in PAGES:
        html = reports[store] / f"{name}.html"
        page = open_page(html, tmp_path / "profile")
        assert page.console == [], (store, name, page.console)
        assert page.requests == [], (store, name, page.requests)
        assert page.charts == page.embeds, (store, name, page.charts, page.embeds)
        assert "lmpipe report" in page.dom, (store, name)
        drawn += page.charts
    assert drawn >= 4, drawn   # curves, scaling and distillation each draw theirs

    png = screenshot(reports[store] / "distillation.html", tmp_path / "page.png",
                     tmp_path / "profile")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000   # a drawn page, not a blank one
