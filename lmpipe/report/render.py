"""The HTML reports: self-contained pages drawn from the run database with Altair.

`render_report(db_path, out_dir)` writes six pages into `out_dir`, each one file that renders
offline (the Vega bundle is inlined, nothing is fetched):

- `index.html`: a headline summary of the key comparisons in numbers (lmpipe.report.headline),
  links to the others, the sweep table (one row per sweep point with its parameters
  and its eval run's headline figures) and the most recent runs;
- `curves.html`: any logged metric against step and tokens across runs (a dropdown picks it; the
  colour is one parameter's value per run, `color_by`), and accuracy with vs without the tool over
  training (lmpipe.report.curves);
- `scaling.html`: knowledge bits against parameters with the 2 bits/param line, contour maps of
  accuracy over (parameters, facts) with and without the tool from one kind of model when a sweep
  gives a lattice, and one labelled point per other model (lmpipe.report.scaling, .contours);
- `distillation.html`: teacher vs scratch vs distilled vs quantized per metric, and the
  distillation curves (lmpipe.report.distillation);
- `probes.html`: probe statistics as layer x step heatmaps, and linear-probe accuracy per layer
  and checkpoint (lmpipe.report.probes);
- `sweeps.html`: each sweep's axes against the trained model's accuracy, validation loss and
  optimizer memory, the best value of the last axis, and the curves per point
  (lmpipe.report.sweeps).

Every axis names its metric and unit (lmpipe.report.units). A page with nothing to show says so.
With `png=True` every chart is also written as `<page>-<chart>.png` beside the pages (vl-convert,
offline). The store is read through one read-only DuckDB connection (lmpipe.report.source);
aggregation and thinning happen in SQL.
"""

from __future__ import annotations

from pathlib import Path

from lmpipe.core.outputs import write_atomic
from lmpipe.report import curves, distillation, index, probes, scaling, sweeps
from lmpipe.report.page import VL_VERSION, Page, chart_spec
from lmpipe.report.source import Source

__all__ = ["render_report"]


def save_png(page: Page, out_dir: Path) -> list[Path]:
    """Each chart of `page` as `<page>-<chart>.png` in `out_dir` (rendered by vl-convert)."""
    import vl_convert

    paths = []
    for div_id, chart in page.charts.items():
        path = out_dir / f"{page.stem}-{div_id}.png"
        path.write_bytes(vl_convert.vegalite_to_png(chart_spec(chart), vl_version=VL_VERSION,
                                                     scale=1.5))
        paths.append(path)
    return paths


def render_report(db_path: Path, out_dir: Path, *, color_by: str | None = None,
                  png: bool = False) -> Path:
    """Write every report page from the run database at `db_path` into `out_dir`.

    `color_by`: the parameter (dotted key, e.g. "world.people", a sweep point key, or a runs column
    such as "stage") that colours the curves; by default the first parameter that varies across
    sweep points, else the run. `png`: also write each chart as a PNG. Returns `out_dir/index.html`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = Source.open(Path(db_path))
    try:
        pages = [curves.build(src, color_by), scaling.build(src), distillation.build(src),
                 probes.build(src), sweeps.build(src)]
        pages.insert(0, index.build(src, pages))
    finally:
        src.close()
    for page in pages:
        write_atomic(out_dir / f"{page.stem}.html", page.html())  # a page is whole or old
        if png:
            save_png(page, out_dir)
    return out_dir / "index.html"
