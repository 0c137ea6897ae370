"""`make run`'s closing line: do the workspace's eval figures equal the committed run's?"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

from lmpipe.core.reproduction import changed_inputs, committed_md5, verdict

FIGURES = b'{"teacher": {"tool_accuracy_heldout": 0.998}}\n'


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                   check=True, capture_output=True)


def committed_project(root: Path, figures: bytes = FIGURES) -> Path:
    """A git repo whose committed dvc.lock records `figures` as metrics/eval.json, as DVC does
    (the eval stage's outs, among others)."""
    root.mkdir()
    lock = {"schema": "2.0", "stages": {
        "train@teacher": {"cmd": "x", "outs": [{"path": "runs/teacher", "hash": "md5",
                                                "md5": "0" * 32 + ".dir"}]},
        "eval": {"cmd": "y", "outs": [
            {"path": "metrics/eval.json", "hash": "md5",
             "md5": hashlib.md5(figures).hexdigest(), "size": len(figures)},
            {"path": "runs/eval", "hash": "md5", "md5": "1" * 32 + ".dir"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    (root / "params.yaml").write_text("eval: {seed: 0}\n")
    git(root, "init", "-q")
    git(root, "add", "dvc.lock", "params.yaml")
    git(root, "commit", "-qm", "a run")
    return root


def test_the_same_figures_reproduce_the_committed_run(tmp_path: Path) -> None:
    root = committed_project(tmp_path / "p")
    assert committed_md5(root) == hashlib.md5(FIGURES).hexdigest()
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_bytes(FIGURES)
    # the workspace's dvc.lock is rewritten by every run: only HEAD's counts
    (root / "dvc.lock").write_text("stages: {}\n")
    assert verdict(root).startswith("reproduction: every eval figure equals the committed run's")


def test_one_digit_off_is_a_different_run_and_says_what_changed(tmp_path: Path) -> None:
    root = committed_project(tmp_path / "p")
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_bytes(FIGURES.replace(b"0.998", b"0.997"))
    line = verdict(root)
    assert "differ from the committed run's" in line and "this machine computes differently" in line
    (root / "params.yaml").write_text("eval: {seed: 1}\n")
    assert changed_inputs(root) == ["params.yaml"]
    assert verdict(root).endswith("the committed run's: changed since HEAD: params.yaml")


def test_nothing_to_compare_with_outside_git_or_before_a_run(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    assert committed_md5(bare) is None
    assert "no committed run to compare with" in verdict(bare)
    root = committed_project(tmp_path / "p")
    assert "not found; run the pipeline first" in verdict(root)
