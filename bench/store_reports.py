"""Benchmark: DuckDB ingest of 1,000 run folders (1M metric rows) and every report page over them.

    .venv/bin/python bench/store_reports.py                 # a temporary folder, deleted after
    .venv/bin/python bench/store_reports.py --keep DIR      # keep DIR/runs, DIR/store, DIR/reports
    .venv/bin/python bench/store_reports.py --runs 200 --metric-rows 100000   # a quick look

Writes the synthetic runs of bench/synthetic_runs.py (a 500-point sweep plus the default runs),
then times (1) a fresh `index_runs` into an empty store, (2) a re-index of the unchanged tree,
(3) an incremental re-index after one run's metrics.jsonl grew by a line, (4) `render_report`
(every page) and, when it takes `png=`, (5) the same with PNGs. Requirement: ingest <= 5 s,
all reports <= 10 s (on the 2-core development machine). Exits 1 if one is missed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from synthetic_runs import write_synthetic_runs  # noqa: E402

from lmpipe.report.render import render_report  # noqa: E402
from lmpipe.store.index import index_runs  # noqa: E402

INGEST_LIMIT_S = 5.0
REPORT_LIMIT_S = 10.0


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def _verdict(seconds: float, limit: float) -> str:
    return f"{'PASS' if seconds <= limit else 'FAIL'} (<= {limit:.0f} s)"


def run(base: Path, runs: int, metric_rows: int) -> bool:
    root, db, reports = base / "runs", base / "store" / "lmpipe.duckdb", base / "reports"
    written, t = _timed(write_synthetic_runs, root, runs, metric_rows)
    print(f"synthetic runs: {written['runs']} folders, {written['metric_rows']:,} metric rows, "
          f"{written['points']} sweep points, {written['eval_rows']:,} eval rows "
          f"(written in {t:.1f} s)")

    counts, ingest = _timed(index_runs, root, db)
    print(f"ingest: {ingest:.2f} s for {counts['runs']} runs, {counts['metrics']:,} metric rows "
          f"({counts['params']:,} params, {counts['evals']:,} evals, {counts['sweep_points']} "
          f"sweep points, {counts['skipped_lines']} skipped lines)  {_verdict(ingest, INGEST_LIMIT_S)}")
    again, t = _timed(index_runs, root, db)
    print(f"re-index, nothing changed: {t:.2f} s ({again['read_runs']} runs read)")
    grown = root / "teacher" / "metrics.jsonl"
    last = json.loads(grown.read_text().splitlines()[-1])
    with open(grown, "a") as f:
        f.write(json.dumps({"step": last["step"] + 25, "loss": 0.01, "val_loss": 0.02}) + "\n")
    again, t = _timed(index_runs, root, db)
    print(f"re-index, one run grew: {t:.2f} s ({again['read_runs']} run read, "
          f"{again['metrics']:,} metric rows)")

    _, report = _timed(render_report, db, reports)
    pages = sorted(p.name for p in reports.glob("*.html"))
    print(f"reports: {report:.2f} s for {len(pages)} pages ({', '.join(pages)})  "
          f"{_verdict(report, REPORT_LIMIT_S)}")
    ok = ingest <= INGEST_LIMIT_S and report <= REPORT_LIMIT_S
    if "png" in inspect.signature(render_report).parameters:
        _, t = _timed(render_report, db, reports, png=True)
        print(f"reports with PNGs: {t:.2f} s ({len(list(reports.glob('*.png')))} PNG files)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write into this folder and keep it")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--metric-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.keep:
        if (args.keep / "runs").exists() or (args.keep / "store").exists():
            parser.error(f"{args.keep} already holds runs/ or store/: pick an empty folder")
        ok = run(args.keep, args.runs, args.metric_rows)
    else:
        base = Path(tempfile.mkdtemp(prefix="lmpipe-bench-store-"))
        try:
            ok = run(base, args.runs, args.metric_rows)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
