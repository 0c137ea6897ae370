"""Projectors from the student's hidden width to the teacher's, trained with the student.

    identity     P = I (widths must match)
    linear       P = W, a learned d_t x d_s matrix
    orthogonal   P = W with orthonormal columns (a learned rotation into the teacher's space:
                 it preserves norms and angles, so it cannot shrink the loss by scaling)
"""

from __future__ import annotations

from torch import nn

from lmpipe.core.section import ConfigError


def make_projector(kind: str, student_width: int, teacher_width: int) -> nn.Module:
    if kind == "identity":
        if student_width != teacher_width:
            raise ConfigError(f"distill.projector = identity: the student's hidden width is "
                              f"{student_width}, the teacher's {teacher_width}; use linear or "
                              "orthogonal")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(student_width, teacher_width, bias=False)
    if kind == "orthogonal":
        if student_width > teacher_width:
            raise ConfigError(f"distill.projector = orthogonal: cannot map {student_width} "
                              f"dimensions isometrically into {teacher_width}; use linear")
        return nn.utils.parametrizations.orthogonal(
            nn.Linear(student_width, teacher_width, bias=False))
    raise ConfigError(f"distill.projector = {kind!r}: expected identity, linear or orthogonal")
