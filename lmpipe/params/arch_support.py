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
                   probes (layers numbered as for distillation), lm-eval harness tasks
                   (`eval.harness_tasks`: hawk generates uncached and unpadded,
                   lmpipe/eval/harness.py)
  train.probes     every architecture, at the sites it has (lmpipe/train/probes.py): llama
                   embeddings, attention, attention_weights, mlp, residual, logits; mamba (and
                   mamba2) embeddings, mixer, residual, logits; hawk embeddings, mixer, mlp,
                   residual, logits. `points: null` (the default) probes every site of the arch;
                   a listed site the arch lacks is refused, naming the key, for llama too

Refused, each with the key to change:

  train            attention: prefix_lm (a recurrent model reads tokens in order: no token can
                   see a later one), compile (`COMPILE_FINDINGS`: measured slower than eager, per arch)
  teacher_cache    attention rows of a non-llama teacher (`teacher_cache.attention_layers`, or
                   `distill.objective.attention_kl`, which auto caches them): it has no attention
  distill          `distill.objective.attention_kl` when the teacher or the student is not llama
                   (no attention map to compare)
`training_problems(p)` runs with every validation (the train sections are the runs' own);
`stage_problems(p, stage)` runs where that stage starts and in the `validate` stage for every
stage of the root pipeline, so a recipe that runs only train and eval is not refused for the
stages it never runs. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from lmpipe.core.archs import DEFAULT_ARCH, is_recurrent, model_type
from lmpipe.core.section import ConfigError
from lmpipe.params.checks import Problem
from lmpipe.train.params import probe_sites

if TYPE_CHECKING:
    from lmpipe.params.config import Params
    from lmpipe.train.params import ProbeParams

PIPELINE_STAGES = ("train", "teacher_cache", "distill", "quantize", "eval")
# why `train.compile` stays refused for the recurrent models: one measured finding per arch (the
# refusal names the finding of the arch it refuses, else every finding there is)
# Measured with bench/compile_archs.py (eager against compiled, same process, a cold inductor
# cache; ~150k parameters, 2 layers, batch 16x128, 2 threads, 2026-12-04) and, for hawk, lmpipe's
# own training loop on length-grouped batches. Every recurrent arch has an entry (a test checks).
COMPILE_FINDINGS = {
    # mambapy's parallel scan; earlier at d_model=91, batch 32x128: 107 s to compile, 2.1 s/step
    # against 1.1 s eager
    "mamba": "compiled it runs ~2x slower than eager: graph breaks in transformers' scan",
    # 134.8 ms/step compiled against 65.1 eager, 43 s to compile cold
    "mamba2": ("compiled it runs ~2x slower than eager (bench/compile_archs.py: 135 against "
               "65 ms a step at ~150k parameters)"),
    # at one fixed length: 45.8 ms/step against 68.9 eager after a 106 s compile; lmpipe's loop,
    # d_model 16, 6 steps of length-grouped batches: 210 s compiled, 1.3 s eager, same losses
    "hawk": ("transformers' scan compiles unrolled over the sequence, so every new batch length "
             "compiles again: 6 steps of lmpipe's length-grouped batches took 210 s compiled "
             "against 1.3 s eager (at one fixed length it is 1.5x faster after a 106 s compile)"),
}


REFUSED_SWITCHES = {  # train key -> (is it on?, why a non-llama model cannot have it)
    "attention": (lambda tp: tp.attention == "prefix_lm",
                  ("= 'prefix_lm' lets prompt tokens see later ones, which a recurrent model, "
                   "reading tokens in order, cannot"), "causal"),
    "compile": (lambda tp: tp.compile, lambda arch: f"true: {COMPILE_FINDINGS[arch]}", "false"),
}


def _trained(p: Params) -> Iterator[tuple[str, str]]:
    """(section, arch) of the models trained from scratch (an imported one has no arch)."""
    for name in ("teacher", "student"):
        section = getattr(p, name)
        if section.pretrained is None:
            yield name, section.model.arch


def training_problems(p: Params) -> Iterator[Problem]:
    """The train switches a recurrent model's own run cannot use, and probe sites a trained
    model's arch does not have."""
    for name, arch in _trained(p):
        tp = getattr(p, name).train
        yield from _probe_sites(name, arch, tp.probes)
        if not is_recurrent(arch):
            continue
        for key, (is_on, why, expected) in REFUSED_SWITCHES.items():
            if is_on(tp):
                reason = why(arch) if callable(why) else why
                yield Problem(f"{name}.train.{key}", f"{reason} ({name}.model.arch = {arch!r})",
                              f"{expected} for arch {arch}")


def _probe_sites(name: str, arch: str, probes: ProbeParams) -> Iterator[Problem]:
    if not probes.enabled:
        return
    own, _ = probe_sites(model_type(arch), None)
    _, missing = probe_sites(model_type(arch), probes.points)
    if missing:
        yield Problem(f"{name}.train.probes.points", f"= {probes.points!r} lists "
                      f"{', '.join(map(repr, missing))}, a site {name}.model.arch = {arch!r} does "
                      "not have", f"some of {own} for arch {arch}, or null for all of them")


def stage_problems(p: Params, stage: str,
                   evaluated: Iterable[str] = ("teacher", "student")) -> Iterator[Problem]:
    """What `stage` cannot do with the architectures `p` asks for; `evaluated`: the sections
    whose models the eval stage scores (the distilled and quantized models are the student's),
    for a refusal of the eval stage (there is none today: every arch runs every eval)."""
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
