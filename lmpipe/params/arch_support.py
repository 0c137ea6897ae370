"""Which stages run which architectures (`teacher.model.arch`, `student.model.arch`), and the
refusals, before any compute, of what a stage cannot yet do with a model that is not llama.

Works for mamba and hawk: training from scratch (`train@teacher`, `train@student`: causal
attention, documents or windows, gradient accumulation, checkpoints and resume, the eval hook's
recall and tool accuracy through each model's own cache) and the eval stage's validation loss,
recall and tool accuracy. Refused, each with the key to change:

  train            attention: prefix_lm (a recurrent model reads tokens in order: no token can
                   see a later one), probes (they hook Llama's attention and MLP), qat (BitLinear
                   export is Llama's), compile (not yet verified on the recurrent scans)
  teacher_cache    a non-llama teacher (hidden states and attention rows are indexed as Llama's)
  distill          a non-llama teacher or student (layer maps, attention_kl)
  quantize         a non-llama student (ternary export and packed loading are Llama's)
  eval             knowledge bits (Llama's KV cache reused across continuations), linear
                   probes (hidden-state indexing) and lm-eval harness tasks, for any non-llama
                   model it evaluates

`training_problems(p)` runs with every validation (the train sections are the runs' own);
`stage_problems(p, stage)` runs where that stage starts and in the `validate` stage for every
stage of the root pipeline, so a recipe that runs only train and eval is not refused for the
stages it never runs. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from lmpipe.core.section import ConfigError
from lmpipe.params.checks import Problem

if TYPE_CHECKING:
    from lmpipe.params.config import Params

PIPELINE_STAGES = ("train", "teacher_cache", "distill", "quantize", "eval")
REFUSED_SWITCHES = {  # train key -> (is it on?, why a non-llama model cannot have it)
    "attention": (lambda tp: tp.attention == "prefix_lm",
                  ("= 'prefix_lm' lets prompt tokens see later ones, which a recurrent model, "
                   "reading tokens in order, cannot"), "causal"),
    "probes.enabled": (lambda tp: tp.probes.enabled,
                       "true: the probes hook Llama's attention and MLP modules", "false"),
    "qat": (lambda tp: tp.qat, "true: the ternary export is Llama's so far", "false"),
    "compile": (lambda tp: tp.compile, "true: not yet verified on the recurrent scans", "false"),
}


def _trained(p: Params) -> Iterator[tuple[str, str]]:
    """(section, arch) of the models trained from scratch (an imported one has no arch)."""
    for name in ("teacher", "student"):
        section = getattr(p, name)
        if section.pretrained is None:
            yield name, section.model.arch


def training_problems(p: Params) -> Iterator[Problem]:
    """The train switches a non-llama model's own run cannot use."""
    for name, arch in _trained(p):
        if arch == "llama":
            continue
        tp = getattr(p, name).train
        for key, (is_on, why, expected) in REFUSED_SWITCHES.items():
            if is_on(tp):
                yield Problem(f"{name}.train.{key}", f"{why} ({name}.model.arch = {arch!r})",
                              f"{expected} for arch {arch}")


def _refuse(section: str, arch: str, stage: str, why: str, instead: str) -> Problem:
    return Problem(f"{section}.model.arch", f"= {arch!r}: the {stage} stage supports llama only "
                   f"so far ({why})", f"llama, or {instead}")


def _knowledge_bits(p: Params) -> bool:
    # lmpipe.runs.evaluation.measures_knowledge, without importing torch
    if p.eval.knowledge_bits != "auto":
        return p.eval.knowledge_bits
    return p.data.source == "people" and (p.world.qa_dialogs or p.world.bios_per_person > 0)


def stage_problems(p: Params, stage: str,
                   evaluated: Iterable[str] = ("teacher", "student")) -> Iterator[Problem]:
    """What `stage` cannot do with the architectures `p` asks for; `evaluated`: the sections
    whose models the eval stage scores (the distilled and quantized models are the student's)."""
    archs = dict(_trained(p))
    without = "a pipeline without it (dvc repro train eval)"
    if stage == "teacher_cache" and archs.get("teacher", "llama") != "llama":
        yield _refuse("teacher", archs["teacher"], stage, "its hidden states and attention rows "
                      "are indexed as Llama's", without)
    if stage == "distill":
        for section in ("teacher", "student"):
            if archs.get(section, "llama") != "llama":
                yield _refuse(section, archs[section], stage, "layer maps and attention_kl "
                              "assume Llama's blocks", without)
    if stage == "quantize" and archs.get("student", "llama") != "llama":
        yield _refuse("student", archs["student"], stage, "the ternary export and packed "
                      "loading are Llama's", without)
    if stage == "eval":
        for section, arch in archs.items():
            if arch == "llama" or section not in evaluated:
                continue
            e = p.eval
            if _knowledge_bits(p):
                yield Problem("eval.knowledge_bits", f"on ({e.knowledge_bits!r} with facts in the "
                              f"training text), but {section}.model.arch = {arch!r}: knowledge "
                              "bits reuse Llama's KV cache across continuations",
                              f"false for arch {arch}")
            if e.linear_probe:
                yield Problem("eval.linear_probe", f"true, but {section}.model.arch = {arch!r}: "
                              "the probes index hidden states as Llama's", f"false for arch {arch}")
            if e.harness_tasks:
                yield Problem("eval.harness_tasks", f"= {e.harness_tasks!r}, but "
                              f"{section}.model.arch = {arch!r}: lm-eval is not yet verified on "
                              "it", f"[] for arch {arch}")


def pipeline_problems(p: Params, stages: Iterable[str] = PIPELINE_STAGES) -> list[Problem]:
    """Every stage's problems, each once (the validate stage's check of the whole pipeline)."""
    found: list[Problem] = []
    for stage in stages:
        found += [problem for problem in stage_problems(p, stage) if problem not in found]
    return found


def refuse_unsupported(p: Params, stage: str, source: str,
                       evaluated: Iterable[str] = ("teacher", "student")) -> None:
    """Raise a ConfigError, one line per problem, if `stage` cannot run what `p` asks for."""
    found = list(stage_problems(p, stage, evaluated))
    if found:
        raise ConfigError("\n".join(problem.line(source) for problem in found))
