"""Which stages run which architectures (`teacher.model.arch`, `student.model.arch`), and the
refusals, before any compute, of what a stage cannot yet do with a model that is not llama.

Works for mamba and hawk:
  train            from scratch (`train@teacher`, `train@student`): causal attention, documents
                   or windows, gradient accumulation, checkpoints and resume, the eval hook's
                   recall and tool accuracy through each model's own cache, and QAT (`qat`)
  teacher_cache    a mamba or hawk teacher: top-k logits and hidden states
  distill          any teacher/student pair of llama, mamba and hawk, cached or live: every logit
                   term, and the hidden-state terms through layer maps, a layer number meaning
                   the same place in every architecture (lmpipe/model/hidden_states.py)
  quantize         BitLinear QAT or PTQ on the nn.Linear layers, packed ternary export and
                   loading, the int8 baseline (Mamba's dt_proj, read by weight, stays float:
                   lmpipe/quant/float_linears.py)
  eval             validation loss, knowledge bits (a recurrent model scores each candidate by a
                   whole forward: lmpipe/eval/knowledge.py), recall and tool accuracy, linear
                   probes (layers numbered as for distillation)

Refused, each with the key to change:

  train            attention: prefix_lm (a recurrent model reads tokens in order: no token can
                   see a later one), probes (they hook Llama's attention and MLP), compile (not
                   yet verified on the recurrent scans)
  teacher_cache    attention rows of a non-llama teacher (`teacher_cache.attention_layers`, or
                   `distill.objective.attention_kl`, which auto caches them): it has no attention
  distill          `distill.objective.attention_kl` when the teacher or the student is not llama
                   (no attention map to compare)
  eval             lm-eval harness tasks (`eval.harness_tasks`: not yet verified), for any
                   non-llama model it evaluates

`training_problems(p)` runs with every validation (the train sections are the runs' own);
`stage_problems(p, stage)` runs where that stage starts and in the `validate` stage for every
stage of the root pipeline, so a recipe that runs only train and eval is not refused for the
stages it never runs. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from lmpipe.core.archs import DEFAULT_ARCH, is_recurrent
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
    "compile": (lambda tp: tp.compile, "true: not yet verified on the recurrent scans", "false"),
}


def _trained(p: Params) -> Iterator[tuple[str, str]]:
    """(section, arch) of the models trained from scratch (an imported one has no arch)."""
    for name in ("teacher", "student"):
        section = getattr(p, name)
        if section.pretrained is None:
            yield name, section.model.arch


def training_problems(p: Params) -> Iterator[Problem]:
    """The train switches a recurrent model's own run cannot use."""
    for name, arch in _trained(p):
        if not is_recurrent(arch):
            continue
        tp = getattr(p, name).train
        for key, (is_on, why, expected) in REFUSED_SWITCHES.items():
            if is_on(tp):
                yield Problem(f"{name}.train.{key}", f"{why} ({name}.model.arch = {arch!r})",
                              f"{expected} for arch {arch}")


def stage_problems(p: Params, stage: str,
                   evaluated: Iterable[str] = ("teacher", "student")) -> Iterator[Problem]:
    """What `stage` cannot do with the architectures `p` asks for; `evaluated`: the sections
    whose models the eval stage scores (the distilled and quantized models are the student's)."""
    archs = dict(_trained(p))
    weight = p.distill.objective.get("attention_kl", 0)
    if stage in ("teacher_cache", "distill") and weight > 0:
        # teacher_cache too: with attention_layers auto it would cache the teacher's rows
        for section in ("teacher", "student") if stage == "distill" else ("teacher",):
            arch = archs.get(section, DEFAULT_ARCH)
            if is_recurrent(arch):
                yield Problem("distill.objective.attention_kl", f"= {weight:g}, but "
                              f"{section}.model.arch = {arch!r} has no attention map to compare",
                              f"0 (hidden_mse or hidden_cosine instead) for arch {arch}")
    listed = p.teacher_cache.attention_layers
    if (stage == "teacher_cache" and is_recurrent(archs.get("teacher", DEFAULT_ARCH))
            and isinstance(listed, list) and listed):
        yield Problem("teacher_cache.attention_layers", f"= {listed!r}, but teacher.model.arch = "
                      f"{archs['teacher']!r} has no attention", f"[] or auto for arch "
                      f"{archs['teacher']}")
    if stage == "eval":
        for section, arch in archs.items():
            if arch == "llama" or section not in evaluated:  # lm-eval: verified on llama only
                continue
            e = p.eval
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
