"""The committed dvc.lock describes the committed pipeline: every stage of dvc.yaml has its entry
with the same command and dependencies, and every code file it depends on has the hash DVC
recorded. A stale lock (code changed, lock from an older run) makes a fresh clone's `make run`
rewrite it and misstates what produced the outputs; `bench/pipeline.py --write-lock` refreshes it
from a real run of the default experiment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# what `dvc add` recorded for test_the_folder_hash_is_dvcs's folder (with .dvcignore: __pycache__/)
EXPECTED_FOLDER_MD5 = "4121d07ad6d13906d6f445baee97c4eb.dir"


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


def code_hash(path: Path) -> str:
    """DVC's md5 of a code dependency: the file's bytes, or for a package folder the md5 of the
    JSON list of its files' md5s and relative paths with `.dir` appended (bytecode caches are in
    .dvcignore)."""
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    entries = [{"md5": hashlib.md5(f.read_bytes()).hexdigest(),
                "relpath": f.relative_to(path).as_posix()}
               for f in sorted(path.rglob("*")) if f.is_file() and "__pycache__" not in f.parts]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_the_folder_hash_is_dvcs(tmp_path: Path):
    """The md5 DVC 3 records for a folder of two files (computed by `dvc add` once)."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("y = 2\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"ignored")
    assert code_hash(tmp_path / "pkg") == EXPECTED_FOLDER_MD5


def test_every_code_dependency_has_the_hash_the_lock_recorded():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stale = set()
    for name, entry in lock.items():
        for dep in entry.get("deps", []):
            path = ROOT / dep["path"]
            if dep["path"].split("/")[0] in ("lmpipe", "stages") and path.exists():
                if code_hash(path) != dep["md5"]:
                    stale.add(dep["path"])
    assert not stale, (f"dvc.lock is stale for {sorted(stale)}; refresh it from a real run: "
                       ".venv/bin/python bench/pipeline.py --write-lock")
