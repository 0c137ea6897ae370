"""Put the teacher's and the student's next-token distributions on one support, at temperature T.

A live teacher gives full distributions: both sides are plain softmaxes over the vocabulary. A
cached teacher gives only its top-k (ids, log-probs) and the log of the mass it left out, so both
sides become k + 1 buckets: the k cached tokens, then the rest.

    teacher:  softmax([log p_1 .. log p_k, log m] / T)     m = missing mass (`residual`)
              softmax([log p_1 .. log p_k, -inf] / T)      the tail taken as zero (`zero`)
    student:  [log q_1 .. log q_k, log (1 - sum_i q_i)]    q = softmax(z / T)

The student's rest bucket is exact to float32 (floored at 1e-7: one full-vocabulary softmax is
the whole cost, which matters with a 49k vocabulary); the teacher's treats its tail as one token
when tempered, which is exact at T = 1. With k equal to the vocabulary both rest buckets are empty and the
result equals the full-distribution computation (the offline = online test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TeacherDistribution:
    """Teacher next-token log-probs (at T = 1) at n positions."""

    logprobs: torch.Tensor                  # (n, k) at `ids`, or (n, V) when `ids` is None
    ids: torch.Tensor | None = None         # (n, k) int64 token ids
    log_missing: torch.Tensor | None = None  # (n,) log of the mass outside `ids`

    def label_logprobs(self, labels: torch.Tensor) -> torch.Tensor:
        """log p(label) per position; a label outside the cached top-k counts as probability 0."""
        if self.ids is None:
            return self.logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        hit = self.ids == labels.unsqueeze(-1)
        found = torch.where(hit, self.logprobs, torch.full_like(self.logprobs, float("-inf")))
        return found.max(-1).values


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate at both ends (Maechler 2012); the mass left outside the
    top-k, floored at 1e-7 (float32 cannot resolve less out of a total of 1)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def aligned(student: torch.Tensor, teacher: TeacherDistribution, temperature: float,
            missing_mass: str = "residual") -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher log-probs, student log-probs) on a shared support, both at `temperature`.

    `student` is the student's full log_softmax(z / T) (the caller computes it once and may
    reuse it, e.g. for the cross-entropy term at T = 1)."""
    if teacher.ids is None:
        return torch.log_softmax(teacher.logprobs.float() / temperature, dim=-1), student
    student_top = student.gather(-1, teacher.ids)
    if teacher.ids.size(-1) >= student.size(-1):
        student_rest = torch.full_like(student_top[:, :1], float("-inf"))  # nothing outside
    else:
        student_rest = _log1mexp(student_top.logsumexp(-1, keepdim=True))
    if missing_mass == "residual" and teacher.log_missing is not None:
        teacher_rest = teacher.log_missing.float().unsqueeze(-1) / temperature
    else:
        teacher_rest = torch.full_like(student_rest, float("-inf"))
    teacher_side = torch.log_softmax(
        torch.cat([teacher.logprobs.float() / temperature, teacher_rest], dim=-1), dim=-1)
    return teacher_side, torch.cat([student_top, student_rest], dim=-1)
