"""Put the teacher's and the student's next-token distributions on one support, at temperature T.

A live teacher gives full distributions: both sides are plain softmaxes over the vocabulary. A
cached teacher gives only its top-k (ids, log-probs) and the log of the mass it left out, so both
sides become k + 1 buckets: the k cached tokens, then the rest.

    teacher:  softmax([log p_1 .. log p_k, log m] / T)     m = missing mass (`residual`)
              softmax([log p_1 .. log p_k, -inf] / T)      the tail taken as zero (`zero`)
    student:  [log q_1 .. log q_k, log (1 - sum_i q_i)]    q = softmax(z / T), exact

The student's rest bucket is exact; the teacher's treats its tail as one token when tempered,
which is exact at T = 1. With k equal to the vocabulary both rest buckets are empty and the
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


def aligned(student_logits: torch.Tensor, teacher: TeacherDistribution, temperature: float,
            missing_mass: str = "residual") -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher log-probs, student log-probs) on a shared support, both at `temperature`."""
    scaled = student_logits.float() / temperature
    if teacher.ids is None:
        return (torch.log_softmax(teacher.logprobs.float() / temperature, dim=-1),
                torch.log_softmax(scaled, dim=-1))
    total = scaled.logsumexp(-1, keepdim=True)
    student_top = scaled.gather(-1, teacher.ids) - total
    if teacher.ids.size(-1) >= scaled.size(-1):
        # nothing outside the top-k: logsumexp over an all -inf row would poison the gradient
        student_rest = torch.full_like(total, float("-inf"))
    else:
        student_rest = scaled.scatter(-1, teacher.ids, float("-inf")).logsumexp(-1, keepdim=True) - total
    if missing_mass == "residual" and teacher.log_missing is not None:
        teacher_rest = teacher.log_missing.float().unsqueeze(-1) / temperature
    else:
        teacher_rest = torch.full_like(student_rest, float("-inf"))
    teacher_side = torch.log_softmax(
        torch.cat([teacher.logprobs.float() / temperature, teacher_rest], dim=-1), dim=-1)
    return teacher_side, torch.cat([student_top, student_rest], dim=-1)
