"""Start the student from the teacher's token embeddings and/or lm head, optionally frozen.

Copying needs identical shapes: the same vocabulary (ids mean the same tokens) and the same hidden
width. A tied student's lm head *is* its embedding, so it is copied with `copy_embeddings`.
"""

from __future__ import annotations

import torch

from lmpipe.core.section import ConfigError
from lmpipe.distill.params import DistillParams


def init_student_from_teacher(student: torch.nn.Module, teacher: torch.nn.Module,
                              dp: DistillParams) -> list[str]:
    """Copy (and freeze) what `dp` asks for; returns the names of what was copied."""
    if not (dp.copy_embeddings or dp.copy_lm_head):
        return []
    s_vocab, t_vocab = student.config.vocab_size, teacher.config.vocab_size
    if s_vocab != t_vocab:
        raise ConfigError(f"distill.copy_embeddings/copy_lm_head: the teacher's vocabulary has "
                          f"{t_vocab} ids, the student's {s_vocab}; they must share a tokenizer")
    s_width, t_width = student.config.hidden_size, teacher.config.hidden_size
    if s_width != t_width:
        raise ConfigError(f"distill.copy_embeddings/copy_lm_head: the teacher's hidden width is "
                          f"{t_width}, the student's (student.model.d_model) {s_width}")
    tied = bool(getattr(student.config, "tie_word_embeddings", False))
    copied = []
    with torch.no_grad():
        if dp.copy_embeddings:
            student.get_input_embeddings().weight.copy_(teacher.get_input_embeddings().weight)
            student.get_input_embeddings().weight.requires_grad_(not dp.freeze_embeddings)
            copied.append("embeddings")
        if dp.copy_lm_head:
            if tied:
                raise ConfigError("distill.copy_lm_head: the student ties its lm head to its "
                                  "embedding (student.model.tie_embeddings); use copy_embeddings")
            student.get_output_embeddings().weight.copy_(teacher.get_output_embeddings().weight)
            student.get_output_embeddings().weight.requires_grad_(not dp.freeze_lm_head)
            copied.append("lm_head")
    return copied
