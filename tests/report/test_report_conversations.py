"""Per-turn conversation accuracy through the store and the reports: a sweep over
world.conversations_per_person with two seeds, written as run folders by hand, indexed, aggregated
per turn (never mixed into the overall figures) and drawn on the scaling and distillation pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmpipe.report.render import render_report
from lmpipe.store.index import index_runs, query
from tests.report.test_report_sweep import spec
from tests.store.test_spread import SEEDS, write_sweep

TURNS = [1, 2, 3]


def inline_rows(chart: dict) -> list[dict]:
    """The rows a spec embeds (Altair's named dataset), values as text like the CSV charts'."""
    data = chart["data"]
    rows = data["values"] if "values" in data else chart["datasets"][data["name"]]
    return [{k: str(v) for k, v in row.items()} for row in rows]


def turn_accuracy(conversations: int, seed: int, turn: int) -> float:
    """Trained on conversations: slowly down a turn; on single questions: only the first turn."""
    if conversations:
        return 1.0 - 0.1 * (turn - 1) - 0.1 * seed
    return 1.0 - 0.1 * seed if turn == 1 else 0.1 * seed


def questions(turn: int) -> int:
    return 10 * turn  # branches make the later turns more numerous


def overall(conversations: int, seed: int) -> float:
    """The eval's row of every turn together: weighted by each turn's questions."""
    return sum(turn_accuracy(conversations, seed, t) * questions(t) for t in TURNS) / sum(
        questions(t) for t in TURNS)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("turns") / "runs"
    combos = [{"world.conversations_per_person": c} for c in (0, 2)]
    write_sweep(root, "conv-5e6f", combos, start=0, models=["teacher"],
                evals=lambda combo, seed, j: [("tool_accuracy", "heldout", 0.5)],
                loss=lambda combo, seed, s: 1.0 + 10 / s)
    for i, combo in enumerate(combos):  # the eval stage's per-turn rows and their overall row
        for seed in SEEDS:
            path = root / "sweeps" / "conv-5e6f" / f"p{i:02d}s{seed}" / "eval" / "evals.jsonl"
            c = combo["world.conversations_per_person"]
            rows = [{"model": "teacher", "metric": "conversation_accuracy", "split": "heldout",
                     "attribute": None, "turn": t, "value": turn_accuracy(c, seed, t),
                     "n": questions(t)} for t in TURNS]
            rows.append({"model": "teacher", "metric": "conversation_accuracy",
                         "split": "heldout", "attribute": None, "turn": None,
                         "value": overall(c, seed), "n": sum(map(questions, TURNS))})
            with path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    db = root.parent / "store.duckdb"
    index_runs(root, db)
    out = root.parent / "report"
    render_report(db, out)
    return db, {p: (out / f"{p}.html").read_text() for p in ("scaling", "distillation")}


def test_the_store_keeps_each_turn_apart_and_the_spread_is_over_seeds(pages) -> None:
    db, _ = pages
    rows = query(db, "SELECT point_group, turn, mean, min, max, n FROM eval_spread WHERE "
                     "metric = 'conversation_accuracy' ORDER BY point_group, turn NULLS FIRST")
    got = {(r["point_group"], r["turn"]): (r["mean"], r["min"], r["max"], r["n"])
           for r in rows.to_dict("records")}
    for group, conversations in (("p00", 0), ("p01", 2)):
        for turn in TURNS:
            values = [turn_accuracy(conversations, s, turn) for s in SEEDS]
            assert got[(group, turn)] == pytest.approx(
                (sum(values) / 3, min(values), max(values), 3))
    # the overall row stays its own: the lowest seed's weighted figure, 10 of 60 questions
    assert got[("p00", None)][1] == pytest.approx(1 / 6)


def test_the_scaling_page_draws_a_line_per_group_named_by_what_varies(pages) -> None:
    _, html = pages
    assert "Accuracy as a conversation grows" in html["scaling"]
    drawn = inline_rows(spec(html["scaling"], "conversation_turns"))
    means = {(r["line"], int(r["turn"])): float(r["value"]) for r in drawn}
    assert set(means) == {(f"world.conversations_per_person={c}", t) for c in (0, 2)
                          for t in TURNS}
    assert means[("world.conversations_per_person=0", 2)] == pytest.approx(0.1)   # (0+.1+.2)/3
    assert means[("world.conversations_per_person=2", 3)] == pytest.approx(0.7)   # (.8+.7+.6)/3


def test_per_turn_rows_do_not_leak_into_the_models_overall_figures(pages) -> None:
    _, html = pages
    # the distillation page (the latest eval run's group): a line per model over the turns,
    # and its overall panel the overall row's mean, not an average over turns and overall rows
    drawn = inline_rows(spec(html["distillation"], "conversation_turns"))
    assert sorted(int(r["turn"]) for r in drawn) == TURNS
    chart = spec(html["distillation"], "evals")
    bars = [row for rows in chart["datasets"].values() for row in rows
            if row.get("metric") == "conversation_accuracy"]
    # the latest eval run is the last one written: p01 (conversations), its three seeds
    assert len(bars) == 1
    assert bars[0]["value"] == pytest.approx(sum(overall(2, s) for s in SEEDS) / 3)
