"""The distillation objective's terms and what each needs, in one table.

Every place that asks "which terms compare hidden states?", "which read the teacher's mass on
every token?" reads it here: the params sections (names `distill.objective` accepts), the
whole-file checks, the teacher cache (which layers to keep), the objective (which signals to
compute) and the logit-loss registry (`lmpipe/distill/registry.py`, whose names must be this
table's logit terms). It lives with the params because validation needs it before any model code
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Term:
    """What one objective term reads.

    kind: `ce` (the data's next token), `logit` (teacher and student distributions), `hidden`
    (hidden states of paired layers, through the projector) or `attention` (head-averaged
    attention rows of paired blocks).
    teacher_mass: KL(student || teacher)-like terms put a student probability over the teacher's,
    infinite wherever the teacher's is zero, so they need the teacher's mass on every token (a
    truncated cache with `missing_mass: zero` cannot give it)."""

    kind: Literal["ce", "logit", "hidden", "attention"]
    teacher_mass: bool = False


TERMS: dict[str, Term] = {
    "ce": Term("ce"),
    "forward_kl": Term("logit"),
    "reverse_kl": Term("logit", teacher_mass=True),
    "jsd": Term("logit"),
    "tvd": Term("logit"),
    "skew_kl": Term("logit"),
    "skew_reverse_kl": Term("logit"),
    "cakld": Term("logit", teacher_mass=True),
    "sinkhorn": Term("logit"),
    "hidden_mse": Term("hidden"),
    "hidden_cosine": Term("hidden"),
    "hidden_infonce": Term("hidden"),
    "attention_kl": Term("attention"),
}

OBJECTIVE_TERMS = tuple(TERMS)
LOGIT_TERMS = tuple(t for t, term in TERMS.items() if term.kind == "logit")
HIDDEN_STATE_TERMS = tuple(t for t, term in TERMS.items() if term.kind == "hidden")
# terms computed from the model's internals rather than its output distribution
ACTIVATION_TERMS = tuple(t for t, term in TERMS.items() if term.kind in ("hidden", "attention"))
TEACHER_MASS_TERMS = tuple(t for t, term in TERMS.items() if term.teacher_mass)
