"""sweeps.html: run folders written by hand as a sweep leaves them (sweep.json, point.json, a
teacher, a distill and an eval run per point), indexed by the real store, then the page's figures
per group, the best learning rate per optimizer and its edge mark."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from lmpipe.report import sweeps
from lmpipe.report.source import Source
from lmpipe.store.index import index_runs

SWEEP = "optimizers-1a2b"
SEED_KEYS = ["distill.train.seed", "eval.seed"]
# (optimizer, lr) -> held-out tool accuracy of seed 0 and seed 1, val loss of both, state bytes
FIGURES = {
    ("adamw", 0.001): ((0.9, 0.9), 0.05, 800),
    ("adamw", 0.003): ((0.9, 0.9), 0.02, 800),   # ties 0.001 on accuracy, lower loss: the best
    ("adamw", 0.01): ((0.5, 0.6), 0.10, 800),
    ("sgd", 0.001): ((0.1, 0.1), 2.0, 400),
    ("sgd", 0.003): ((0.2, 0.3), 1.0, 400),
    ("sgd", 0.01): ((0.4, 0.6), 0.5, 400),       # best at the highest rate swept: an edge
}


def write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def summary(stage: str, name: str, minute: int, **extra) -> dict:
    return {"stage": stage, "name": name, "status": "completed",
            "started_at": f"2026-12-04T10:{minute:02d}:00+00:00",
            "ended_at": f"2026-12-04T10:{minute:02d}:30+00:00", "wall_time_s": 30.0,
            "peak_rss_mb": 500.0, **extra}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    records = []
    for g, ((optimizer, lr), (heldout, val_loss, state)) in enumerate(FIGURES.items()):
        for seed in (0, 1):
            point = f"p{g:02d}s{seed}"
            params = {"distill.train.optimizer": optimizer, "distill.train.lr": lr,
                      "distill.train.seed": seed, "eval.seed": seed}
            record = {"sweep": SWEEP, "point": point, "group": f"p{g:02d}", "seed": seed,
                      "params": params, "status": "completed"}
            records.append(record)
            folder = root / "sweeps" / SWEEP / point
            write_json(folder / "point.json", record)
            # the teacher ran last (restored from DVC's run cache): the distill run is still the
            # point's trained run, named by the axes' section
            write_json(folder / "teacher" / "summary.json",
                       summary("train", "teacher", 59, final_val_loss=0.0001))
            write_json(folder / "distill" / "summary.json", summary(
                "distill", "distilled", g, final_val_loss=val_loss * (1 + seed),
                optimizer_state_bytes=state))
            (folder / "distill" / "metrics.jsonl").write_text("".join(
                json.dumps({"step": s, "loss": 1.0 / s, "val_loss": val_loss * 10 / s,
                            **({"tool_accuracy": heldout[seed] * s / 200} if s % 100 == 0 else {})})
                + "\n" for s in (50, 100, 150, 200)))
            write_json(folder / "eval" / "summary.json", summary("eval", "eval", 58))
            rows = [{"model": "distilled", "metric": "tool_accuracy", "split": "heldout",
                     "attribute": None, "value": heldout[seed], "n": 1200},
                    {"model": "distilled", "metric": "tool_accuracy", "split": "trained",
                     "attribute": None, "value": 1.0, "n": 1200},
                    # another model's and one attribute's rows must not be averaged in
                    {"model": "teacher", "metric": "tool_accuracy", "split": "heldout",
                     "attribute": None, "value": 0.0, "n": 1200},
                    {"model": "distilled", "metric": "tool_accuracy", "split": "heldout",
                     "attribute": "birth_city", "value": 0.0, "n": 200}]
            (folder / "eval" / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records.append({"sweep": SWEEP, "point": "p06s0", "group": "p06", "seed": 0, "status": "pending",
                    "params": {"distill.train.optimizer": "lion", "distill.train.lr": 0.001,
                               "distill.train.seed": 0, "eval.seed": 0}})
    write_json(root / "sweeps" / SWEEP / "sweep.json",
               {"sweep": SWEEP, "points": records,
                "axes": {"cross": {"distill.train.optimizer": ["adamw", "sgd"],
                                   "distill.train.lr": [0.001, 0.003, 0.01]},
                         "seeds": [0, 1], "seed_keys": SEED_KEYS}})
    db = tmp_path / "store.duckdb"
    index_runs(root, db)
    return db


def figures_of(store: Path):
    src = Source.open(store)
    try:
        return sweeps.sweep_figures(src, SWEEP, src.sweep_points)
    finally:
        src.close()


def test_each_group_shows_its_seeds_spread_of_the_evaluated_models_figures(store):
    axes, figures = figures_of(store)
    # the grid's order (the store keeps params with sorted keys); seeds are not an axis
    assert axes == ["distill.train.optimizer", "distill.train.lr"]
    assert len(figures) == 6                                       # the pending point: no run
    by = {(r["distill.train.optimizer"], r["distill.train.lr"]): r for _, r in figures.iterrows()}
    sgd = by[("sgd", 0.003)]
    assert sgd["n"] == 2 and sgd["heldout_mean"] == pytest.approx(0.25)
    assert (sgd["heldout_min"], sgd["heldout_max"]) == (0.2, 0.3)
    assert sgd["trained_mean"] == 1.0
    assert (sgd["val_loss_min"], sgd["val_loss_max"]) == (1.0, 2.0)
    assert by[("adamw", 0.001)]["optimizer_bytes_mean"] == 800
    assert by[("sgd", 0.01)]["optimizer_bytes_mean"] == 400


def test_the_best_rate_per_optimizer_breaks_ties_on_loss_and_marks_the_grids_edge(store):
    axes, figures = figures_of(store)
    best = sweeps.best_per_rest(figures, axes)
    picked = {r["distill.train.optimizer"]: (r["distill.train.lr"], r["edge"])
              for _, r in best.iterrows()}
    assert picked == {"adamw": (0.003, False), "sgd": (0.01, True)}


def test_the_page_draws_the_tables_and_the_curves(store):
    src = Source.open(store)
    try:
        page = sweeps.build(src)
    finally:
        src.close()
    html = page.html()
    assert f"Sweep {SWEEP}" in html
    assert "0.2500 (0.2000–0.3000)" in html                 # sgd at 0.003, over its two seeds
    assert re.search(r"<td>sgd</td>\s*<td>0.01</td>.*?<td>yes</td>", html, re.DOTALL)
    assert "extend the grid past it" in html
    assert list(page.charts) == ["sweep-curves-0"]
    curves = page.charts["sweep-curves-0"].to_dict()
    # Vega-Lite reads a dot in a field name as a nested field: the axes are titles, not fields
    assert '"field": "distill.' not in json.dumps(curves)
    assert {"distill.train.optimizer", "distill.train.lr"} <= set(re.findall(
        r'"title": "([^"]+)"', json.dumps(curves)))
    values = [v for d in curves["datasets"].values() for v in d]
    # the mean over seeds of the periodic tool accuracy of sgd at 0.01 at step 200: (0.4 + 0.6) / 2
    assert any(v["metric"] == "tool_accuracy" and v["step"] == 200 and v["grp"] == "p05"
               and v["value"] == pytest.approx(0.5) for v in values)


def test_the_edge_is_each_optimizers_own_when_they_sweep_their_own_rates():
    """A zip of optimizers and their own rates: 0.1 is inside the whole grid's 0.001-1.0 but
    the lowest SGD swept, and 0.01 is AdamW's highest."""
    rows = [("adamw", 0.001, 0.5), ("adamw", 0.003, 0.3), ("adamw", 0.01, 0.2),
            ("sgd", 0.1, 1.0), ("sgd", 0.3, 1.5), ("sgd", 1.0, 9.0),
            ("muon", 0.003, 0.4), ("muon", 0.01, 0.1), ("muon", 0.03, 0.3)]
    figures = pd.DataFrame([{"distill.train.optimizer": o, "distill.train.lr": lr,
                             "heldout_mean": None, "val_loss_mean": loss}
                            for o, lr, loss in rows])
    best = sweeps.best_per_rest(figures, ["distill.train.optimizer", "distill.train.lr"])
    picked = {r["distill.train.optimizer"]: (r["distill.train.lr"], r["edge"])
              for _, r in best.iterrows()}
    assert picked == {"adamw": (0.01, True), "sgd": (0.1, True), "muon": (0.01, False)}
