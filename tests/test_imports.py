"""lmpipe's modules import one another without cycles, counting the imports inside functions: a
cycle held together by a function-level import breaks as soon as someone moves that import.
Imports under `if TYPE_CHECKING:` never run and are left out (params_checks names the config
sections it checks for the type checker only)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
                # `from lmpipe import protocol` imports the module lmpipe.protocol
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


# ARCHITECTURE.md's groups, top to bottom: a module imports only from its group or those above
LAYERS = {
    "core": "paths outputs jsonl runlog progress profiler protocol",
    "params": "config params_checks recipes artifacts run_identity",
    "data": "world sources tooldb tokenizer tokenizer_kinds tokens batching masks",
    "model": "model init context pretrained model_card ternary bitlinear ternary_packing "
             "quantized_load ternary_export",
    "train": "train checkpoint optim schedule losses distributed tracking probes probe_stats",
    "distill": "distill teacher_cache",
    "eval": "evaluate generate knowledge harness linear_probe checkpoint_eval train_accuracy",
    "runs": "runs quantize entry",
    "top": "store store_read store_probes store_spread report sweep sweep_run sweep_flow "
           "dvc_plots cli",
}


def _layer(module: str) -> int:
    """The index of `module`'s group (a subpackage's modules are in their package's group)."""
    if module == "lmpipe":
        return 0
    top = module.split(".")[1]
    for i, names in enumerate(LAYERS.values()):
        if top in names.split():
            return i
    raise AssertionError(f"{module} is in no group of LAYERS: add it (and to ARCHITECTURE.md)")


def test_the_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_lmpipe_has_no_import_cycles():
    graph = _graph()
    assert {"lmpipe.quantize", "lmpipe.ternary", "lmpipe.evaluate"} <= set(graph)
    assert "lmpipe.ternary" in graph["lmpipe.bitlinear"]  # relative and package imports resolve
    assert _cycles(graph) == []


def test_modules_import_only_their_own_group_or_the_groups_above():
    graph = _graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if _layer(b) > _layer(a))
    assert upward == []
    assert _layer("lmpipe.distill.objective") == _layer("lmpipe.teacher_cache")
    assert _layer("lmpipe.report.scaling") > _layer("lmpipe.evaluate") > _layer("lmpipe.train")
