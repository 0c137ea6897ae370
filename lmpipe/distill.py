"""Distillation from the teacher cache: forward KL at a temperature, mixed with label cross-entropy.

With teacher probabilities p renormalized over its cached top-k tokens and student probabilities
q over the full vocabulary, both at temperature T:

    KD = T^2 * sum_i p_i (log p_i - log q_i)        (i over the teacher's top-k)
    loss = w * KD + (1 - w) * CE(labels)

averaged over target positions only (padding and prompt tokens never contribute).
"""

from __future__ import annotations

import torch

from lmpipe.batching import Batch
from lmpipe.teacher_cache import TeacherCache
from lmpipe.losses import masked_cross_entropy


def forward_kl_topk(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
                    teacher_logprobs: torch.Tensor, temperature: float,
                    reduction: str = "mean") -> torch.Tensor:
    """Forward KL(teacher_topk || student) per position (mean or sum over positions), scaled by
    T^2. Shapes (n, V), (n, k)."""
    teacher = torch.log_softmax(teacher_logprobs.float() / temperature, dim=-1)
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, teacher_ids)
    per_position = (teacher.exp() * (teacher - student)).sum(-1) * temperature**2
    return per_position.mean() if reduction == "mean" else per_position.sum()


def kd_objective(cache: TeacherCache, temperature: float, kd_weight: float):
    """A training objective for `lmpipe.train.train` that reads teacher signals from `cache`."""

    def objective(model: torch.nn.Module, batch: Batch):
        """Sums over target positions (the loop normalizes by the global target count)."""
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ce = masked_cross_entropy(logits, batch)
        targets = batch.target_mask > 0
        where = batch.positions[:, :-1][targets].cpu().numpy()
        teacher_ids = torch.from_numpy(cache.ids[where].astype("int64")).to(logits.device)
        teacher_logprobs = torch.from_numpy(cache.logprobs[where].astype("float32")).to(logits.device)
        kd = forward_kl_topk(logits[:, :-1][targets], teacher_ids, teacher_logprobs, temperature,
                             reduction="sum")
        loss = kd_weight * kd + (1.0 - kd_weight) * ce
        return loss, {"kd_loss": kd.detach(), "ce_loss": ce.detach()}

    return objective
