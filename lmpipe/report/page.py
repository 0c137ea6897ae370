"""The HTML shell every report page shares: style, navigation, the inlined Vega bundle, chart
embedding, tables and number formatting.

A page is a `Page` (title, body fragments, charts); `Page.html()` turns it into one self-contained
file: the Vega/Vega-Lite/vega-embed bundle is inlined (from vl-convert, cached on disk), so
a page renders offline and can be mailed or archived alone. Pages without charts carry no bundle.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from lmpipe.core.outputs import write_atomic

# (file stem, link text, one-line description) of every page, in navigation order.
PAGES = [
    ("index", "Index", "runs, sweeps and links"),
    ("curves", "Curves", ("any logged metric against step or tokens, across runs; accuracy with "
                          "and without the tool over training")),
    ("scaling", "Scaling", ("knowledge bits against parameters (2 bits/param line); accuracy "
                            "contours over parameters × facts, with and without the tool")),
    ("distillation", "Distillation", ("teacher vs scratch vs distilled vs quantized, per metric; "
                                      "distillation curves")),
    ("probes", "Probes", ("activation and gradient statistics per layer over training; linear "
                          "probes per layer and checkpoint")),
    ("sweeps", "Sweeps", ("each sweep's axes against the trained model's accuracy, loss and "
                          "optimizer memory; the best value of the last axis; curves per point")),
]

VL_VERSION = "_".join(alt.SCHEMA_VERSION.split(".")[:2])  # vl-convert's name for Altair's target
NO_RUNS = "<p>No runs yet: run a stage, then <code>lmpipe index</code>.</p>"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222;
       padding: 0 1rem; }
h1 { margin-bottom: 0; } .meta { color: #666; margin-top: .2rem; }
nav a { margin-right: 1rem; } nav a.here { font-weight: bold; color: #222; text-decoration: none; }
p.howto { color: #444; max-width: 60rem; } p.note { color: #666; font-size: .9rem; }
div.scroll { max-width: 100%; overflow-x: auto; }
ul.headline li { margin: .25rem 0; }
table.numbers { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
table.numbers th, table.numbers td { padding: .25rem .7rem; border-bottom: 1px solid #ddd;
                                     text-align: right; }
table.numbers th:first-child, table.numbers td:first-child { text-align: left; }
"""


def bundle_cache_path() -> Path:
    """Where `vega_bundle` keeps its script: the user's cache folder, named by the vl-convert
    release and the Vega-Lite version, so another release or target builds its own."""
    import vl_convert

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = f"vega-bundle-vl-convert-{vl_convert.__version__}-vega-lite-{VL_VERSION}.js"
    return root / "lmpipe" / name


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite (the version Altair targets) and vega-embed as one script (~900 KB).

    vl-convert bundles it anew each call (~1.3 s); the same release gives the same script, so it
    is read from `bundle_cache_path()` once written there. A cache that cannot be written (a
    read-only home) only costs the rebuild."""
    import vl_convert

    path = bundle_cache_path()
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8")
    bundle = vl_convert.javascript_bundle(vl_version=VL_VERSION)
    with contextlib.suppress(OSError):
        write_atomic(path, bundle)  # whole or absent: a reader never sees half a script
    return bundle


def esc(text: Any) -> str:
    return html.escape(str(text))


def fmt(value: Any) -> str:
    """A table cell: integers (and whole numbers from 10 up) as integers with thousands
    separators, other numbers with 4 decimals below 10 and 2 above; '–' when missing."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if abs(value) >= 10 and float(value).is_integer():  # a count stored as a double
            return f"{value:,.0f}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def fmt_count(value: Any) -> str:
    """A count (parameters, bytes) as an integer with thousands separators; '–' if missing."""
    if value is None or pd.isna(value):
        return "–"
    return f"{value:,.0f}"


def fmt_spread(mean: Any, low: Any, high: Any, n: Any, number: Any = fmt) -> str:
    """A figure over replicates: 'mean (min–max)' when more than one run made it and they differ,
    else the figure alone (`number` formats each part)."""
    if mean is None or pd.isna(mean):
        return "–"
    if n is None or pd.isna(n) or n <= 1 or number(low) == number(high):
        return number(mean)
    return f"{number(mean)} ({number(low)}–{number(high)})"


def duration(seconds: Any) -> str:
    """Seconds as '12.3s', '20m 34.5s' or '2h 05m'; '–' if missing."""
    if seconds is None or pd.isna(seconds):
        return "–"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:04.1f}s"
    return f"{secs:.1f}s"


def table(frame: pd.DataFrame) -> str:
    """An HTML table inside a box that scrolls sideways rather than overflow the page."""
    body = frame.to_html(index=False, border=0, na_rep="–", escape=True, classes="numbers")
    return f'<div class="scroll">{body}</div>'


def howto(text: str) -> str:
    return f'<p class="howto">{text}</p>'


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def chart_spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    with alt.data_transformers.disable_max_rows():
        return chart.to_dict()


@dataclass
class Page:
    """One report page: `add` text, `chart` charts (embedded where they are added)."""

    stem: str
    title: str
    body: list[str] = field(default_factory=list)
    charts: dict[str, alt.TopLevelMixin] = field(default_factory=dict)

    def add(self, *fragments: str) -> None:
        self.body.extend(fragments)

    def chart(self, div_id: str, chart: alt.TopLevelMixin) -> None:
        spec = json.dumps(chart_spec(chart), separators=(",", ":")).replace("</", "<\\/")
        self.charts[div_id] = chart
        self.add(f'<div id="{div_id}"></div>\n<script type="text/javascript">\n'
                 f'vegaEmbed("#{div_id}", {spec}, {{"mode": "vega-lite"}}).catch(console.error);\n'
                 "</script>")

    def html(self) -> str:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        here = ' class="here"'
        nav = " ".join(f'<a href="{stem}.html"{here if stem == self.stem else ""}>{esc(text)}</a>'
                       for stem, text, _ in PAGES)
        script = (f'<script type="text/javascript">\n{vega_bundle()}\n</script>'
                  if self.charts else "")
        title = "lmpipe report" if self.stem == "index" else f"lmpipe report: {self.title}"
        return "\n".join([
            "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", script, "</head>", "<body>",
            f"<h1>{esc(title)}</h1>", f'<p class="meta">generated {now}</p>', f"<nav>{nav}</nav>",
            *self.body, "</body>", "</html>", "",
        ])
