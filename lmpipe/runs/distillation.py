"""Distillation runs: the teacher's signals (its cache or the live model) and the student trained
against them through the one training code path (`run_training`)."""

from __future__ import annotations

from pathlib import Path

import torch

from lmpipe.core.artifacts import tokenizer_identity
from lmpipe.core.section import ConfigError
from lmpipe.data.tokens import TokenSplit
from lmpipe.distill.cache.format import model_fingerprint
from lmpipe.distill.cache.read import TeacherCache
from lmpipe.distill.objective import build_objective
from lmpipe.distill.student_init import init_student_from_teacher
from lmpipe.distill.teacher import CachedTeacher, LiveTeacher, TeacherSource
from lmpipe.model.build import load_model
from lmpipe.params.config import Params
from lmpipe.runs.training import run_training
from lmpipe.train.params import TrainParams


def open_teacher(params: Params, tokens_dir: Path, tokenizer_dir: Path, cache_dir: Path,
                 teacher_dir: Path) -> tuple[TeacherSource, dict]:
    """The teacher's signals as `distill.teacher` asks (cache or live model), and what
    identifies them (so a checkpoint never resumes against another teacher)."""
    if params.distill.teacher == "live":
        model, _ = load_model(teacher_dir)
        if tokenizer_identity(tokenizer_dir) != tokenizer_identity(teacher_dir):
            raise ConfigError(f"distill.teacher = live: {teacher_dir} was saved with another "
                              f"tokenizer than {tokenizer_dir}; retrain or re-import the teacher")
        tp = params.teacher.train  # the teacher reads text with its own attention mask
        mask = TokenSplit.open(tokens_dir, "train").mask if tp.loss_on == "mask" else None
        return (LiveTeacher(model, attention=tp.attention, token_mask=mask),
                model_fingerprint(teacher_dir))
    expect = {"tokenizer_sha256": tokenizer_identity(tokenizer_dir)}
    if (Path(teacher_dir) / "model.safetensors").is_file():  # the cache must be this teacher's
        expect["teacher_sha256"] = model_fingerprint(teacher_dir)["teacher_sha256"]
    cache = TeacherCache.open(cache_dir, expect=expect)
    if cache.manifest["positions"] != TokenSplit.open(tokens_dir, "train").n_tokens:
        raise ConfigError(f"{cache_dir}: cache covers {cache.manifest['positions']} positions, "
                          "the train split has a different count; rebuild the cache")
    return CachedTeacher(cache), dict(cache.manifest)


def distill(params: Params, tokens_dir: Path, tokenizer_dir: Path, cache_dir: Path,
            teacher_dir: Path, out: Path, train_params: TrainParams | None = None,
            stage: str = "distill", name: str = "distilled") -> dict:
    """Train the student architecture against the teacher (`distill` section); `train_params`
    replaces `distill.train` (the quantize stage's QAT fine-tuning uses the same objective)."""
    d = params.distill
    if train_params is not None:
        d = d.model_copy(update={"train": train_params})
    teacher, identity = open_teacher(params, tokens_dir, tokenizer_dir, cache_dir, teacher_dir)

    def make_objective(student: torch.nn.Module):
        if d.copy_embeddings or d.copy_lm_head:
            source = teacher.model if isinstance(teacher, LiveTeacher) else load_model(teacher_dir)[0]
            copied = init_student_from_teacher(student, source, d)
            print(f"distill: student starts from the teacher's {' and '.join(copied)}")
        return build_objective(d, teacher, student)

    return run_training(stage, name, params, params.student.model, d.train, tokens_dir,
                        tokenizer_dir, out, make_objective,
                        {"distill": d.model_dump(mode="json"),
                         "model": params.student.model.model_dump(mode="json")},
                        teacher=str(teacher_dir), inputs={"teacher": identity},
                        keys=(f"{stage}.train", "student.model"))
