"""The Prefect flow's helpers: stage order read from dvc.yaml, and the eval artifact's markdown."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flows.pipeline import eval_markdown, stage_order  # noqa: E402


def test_stage_order_respects_every_dependency():
    order = stage_order(ROOT)
    assert set(order) == {"validate", "prepare", "tokenize", "train@teacher", "train@student",
                          "teacher_cache", "distill", "quantize", "eval", "index", "report"}
    assert order[0] == "validate"  # every other stage depends on it
    before = [("prepare", "tokenize"), ("tokenize", "train@teacher"), ("train@teacher", "teacher_cache"),
              ("teacher_cache", "distill"), ("distill", "quantize"), ("quantize", "eval"),
              ("train@student", "eval"), ("eval", "index"), ("index", "report")]
    for first, then in before:
        assert order.index(first) < order.index(then), (first, then)


def test_eval_markdown_has_one_row_per_model_and_the_report_link(tmp_path):
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"teacher": {"tool_accuracy_heldout": 0.99833, "val_loss": 0.5},
                                   "student": {"tool_accuracy_heldout": 0.25}}))
    text = eval_markdown(metrics, tmp_path / "index.html")
    assert "| teacher | 0.9983 | 0.5 |" in text
    assert "| student | 0.25 |  |" in text
    assert (tmp_path / "index.html").as_uri() in text
