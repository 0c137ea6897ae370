"""lmpipe's packages import downward only (the import-linter layers contract in pyproject.toml)
and its modules import one another without cycles, counting the imports inside functions: a
cycle held together by a function-level import breaks as soon as someone moves that import.
Imports under `if TYPE_CHECKING:` never run and are left out (params/checks.py names the config
sections it checks for the type checker only)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "lmpipe").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([node.module] if node.module else []))
                # `from lmpipe.core import protocol` imports the module lmpipe.core.protocol
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                               for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _contract_layers() -> list[str]:
    """The packages of pyproject.toml's import-linter layers contract, top to bottom."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = config["tool"]["importlinter"]["contracts"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def test_the_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_lmpipe_has_no_import_cycles():
    graph = _graph()
    assert {"lmpipe.runs.quantize", "lmpipe.quant.ternary", "lmpipe.eval.evaluate"} <= set(graph)
    # relative and package imports resolve
    assert "lmpipe.quant.ternary" in graph["lmpipe.quant.bitlinear"]
    assert _cycles(graph) == []


def test_every_module_lives_in_a_layer_of_the_contract():
    layers = _contract_layers()
    assert layers[-1] == "lmpipe.core" and layers[0] == "lmpipe.cli"
    outside = sorted(m for m in _modules() if m != "lmpipe"
                     and not any(m == layer or m.startswith(layer + ".") for layer in layers))
    assert outside == []


def test_packages_import_downward_only():
    """import-linter's layers contract (pyproject.toml), imports inside functions included."""
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path: Path):
    """A copy of the library where the data package imports the training loop breaks it."""
    shutil.copytree(ROOT / "lmpipe", tmp_path / "lmpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    tokens = tmp_path / "lmpipe" / "data" / "tokens.py"
    tokens.write_text(tokens.read_text(encoding="utf-8") + "\nfrom lmpipe.train import loop\n",
                      encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=tmp_path,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "lmpipe.data.tokens -> lmpipe.train.loop" in result.stdout


def test_package_inits_import_nothing():
    """Importing one module never imports its siblings through the package's __init__.py."""
    heavy = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "lmpipe").glob("*/__init__.py")
                   if any(isinstance(node, (ast.Import, ast.ImportFrom))
                          for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))))
    assert heavy == []


def test_the_cli_help_loads_no_heavy_library():
    code = ("import sys, lmpipe.cli; print(sorted({'torch', 'transformers', 'duckdb', 'altair', "
            "'pandas'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
