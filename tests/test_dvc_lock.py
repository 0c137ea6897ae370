"""The committed dvc.lock describes the committed pipeline: every stage of dvc.yaml has its entry
with the same command and dependencies, and every code file it depends on has the hash DVC
recorded. A stale lock (code changed, lock from an older run) makes a fresh clone's `make run`
rewrite it and misstates what produced the outputs; `bench/pipeline.py --write-lock` refreshes it
from a real run of the default experiment."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def expanded_stages() -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded (`train@teacher`), `${item}` substituted."""
    stages = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            stages[name] = stage
            continue
        for item in stage["foreach"]:
            text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
            stages[f"{name}@{item}"] = yaml.safe_load(text)
    return stages


def test_the_lock_has_every_stage_with_its_command_and_dependencies():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stages = expanded_stages()
    assert set(lock) == set(stages)
    for name, stage in stages.items():
        assert lock[name]["cmd"] == stage["cmd"], name
        assert {d["path"] for d in lock[name].get("deps", [])} == set(stage.get("deps", [])), name


def test_every_code_dependency_has_the_hash_the_lock_recorded():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stale = set()
    for name, entry in lock.items():
        for dep in entry.get("deps", []):
            path = ROOT / dep["path"]
            if dep["path"].endswith(".py") and path.is_file():
                if hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                    stale.add(dep["path"])
    assert not stale, (f"dvc.lock is stale for {sorted(stale)}; refresh it from a real run: "
                       ".venv/bin/python bench/pipeline.py --write-lock")
