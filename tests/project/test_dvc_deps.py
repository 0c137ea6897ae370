"""Every lmpipe module a DVC stage can run is among that stage's deps (its package folders), so a
code change reruns it.

The modules a stage can run are the closure of the imports, at any depth and inside functions
too, starting from its script in stages/. A module missing from `dvc.yaml` would let an edit to
it leave a stale output that DVC calls up to date.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """Names of the lmpipe/stages modules `path` imports anywhere in its body."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside a package
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in ("lmpipe", "stages")}


def code_closure(script: Path) -> set[Path]:
    """Every lmpipe/stages source file reachable from `script` through imports."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def _stages() -> list[tuple[str, str, list[Path]]]:
    """(stage name, script module, deps as paths) for every stage of the root dvc.yaml and of
    the recipes' own pipelines (recipes/*/dvc.yaml, whose paths are relative to their folder)."""
    found = []
    for dvcfile in [ROOT / "dvc.yaml", *sorted(ROOT.glob("recipes/*/dvc.yaml"))]:
        prefix = "" if dvcfile.parent == ROOT else f"{dvcfile.parent.relative_to(ROOT)}:"
        for name, stage in yaml.safe_load(dvcfile.read_text())["stages"].items():
            items = stage["foreach"] if "foreach" in stage else [None]
            body = stage["do"] if "foreach" in stage else stage
            for item in items:
                cmd = body["cmd"].replace("${item}", str(item))
                # `sh stages/run.sh NAME ...` runs `python -m stages.NAME ...`
                module = "stages." + cmd.split("stages/run.sh ", 1)[1].split()[0]
                deps = [(dvcfile.parent / str(d).replace("${item}", str(item))).resolve()
                        for d in body.get("deps", [])]
                label = name if item is None else f"{name}@{item}"
                found.append((prefix + label, module, deps))
    return found


@pytest.mark.parametrize("stage, module, deps", _stages(), ids=[s[0] for s in _stages()])
def test_every_module_a_stage_runs_is_a_dep(stage, module, deps):
    script = _module_file(module)
    assert script is not None, f"{stage}: {module} not found"
    covered = deps
    missing = sorted(str(p.relative_to(ROOT)) for p in code_closure(script)
                     if not any(p == d or d in p.parents for d in covered))
    assert not missing, f"dvc stage {stage} runs code it does not list as deps: {missing}"


# a stage that runs none of a package's code still reads its params section (the root Params
# composes every section): it lists those files, so an edit to the package's code leaves it be
PARAMS_SECTION = {"__init__.py", "params.py", "terms.py"}
# ... and validation reads the task names eval.harness_tasks accepts (lmpipe/eval/task_names.py)
PARAMS_READ = PARAMS_SECTION | {"task_names.py"}


@pytest.mark.parametrize("stage, module, deps", _stages(), ids=[s[0] for s in _stages()])
def test_deps_name_package_folders_not_their_modules(stage, module, deps):
    """A stage lists lmpipe's packages whole, so a module added to a package is covered at once;
    only a package it reads nothing of but its params section is listed file by file."""
    package_root = ROOT / "lmpipe"
    folders = {d for d in deps if d.parent == package_root and d.is_dir()}
    modules = [d for d in deps if package_root in d.parents and d.parent != package_root]
    wrong = sorted(str(d.relative_to(ROOT)) for d in modules
                   if d.parent in folders or d.name not in PARAMS_READ)
    assert wrong == [], f"dvc stage {stage} lists modules of a package; list the package"


def test_the_closure_reaches_inside_packages():
    closure = {str(p.relative_to(ROOT)) for p in code_closure(ROOT / "stages" / "eval.py")}
    assert {"lmpipe/eval/evaluate.py", "lmpipe/data/tooldb.py", "lmpipe/core/protocol.py",
            "lmpipe/params/config.py", "lmpipe/stage.py"} <= closure
    assert "lmpipe/distill/objective.py" not in closure
    # training from scratch never runs distillation code (it reads only the distill section), so
    # an edit to a distillation objective leaves the teacher and the student be
    train = {str(p.relative_to(ROOT)) for p in code_closure(ROOT / "stages" / "train.py")}
    assert "lmpipe/runs/training.py" in train
    assert {Path(n).name for n in train if n.startswith("lmpipe/distill/")} == PARAMS_SECTION
