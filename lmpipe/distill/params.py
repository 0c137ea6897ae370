"""The distillation sections of params.yaml: `teacher_cache` (what the teacher's one pass
stores), `distill` (the objective and its terms, lmpipe/distill/terms.py) and `quantize` (the
ternary student, fine-tuned through the distillation objective when `method: qat`)."""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import Field, model_validator

from lmpipe.core.section import Section, short
from lmpipe.distill.terms import ACTIVATION_TERMS, OBJECTIVE_TERMS
from lmpipe.train.params import TrainParams


class TeacherCacheParams(Section):
    """What the `teacher_cache` stage stores per position (see lmpipe/distill/cache/)."""

    top_k: int = Field(32, ge=1, description="teacher log-probs kept per position")
    logprobs: Literal["u8", "fp16", "fp32"] = Field(
        "u8", description="u8: log-probs quantized in 1/16-nat steps (1 byte); fp16; fp32 (exact)")
    shard_positions: int = Field(1 << 20, ge=1, description="positions per shard file")
    hidden_layers: Literal["auto"] | list[int] = Field(
        "auto", description="teacher hidden states to cache for hidden-state losses (0 = "
        "embedding output, L = last layer); auto: those distill.objective and distill.layers use")
    attention_layers: Literal["auto"] | list[int] = Field(
        "auto", description="teacher blocks (1..L) whose head-averaged attention rows to cache "
        "for attention_kl (whole documents only); auto: those the distill objective uses")
    hidden_dtype: Literal["fp16", "fp32"] = Field("fp16", description="hidden states and attention")
    batch_size: int = Field(64, ge=1)


LAYER_MAPS = r"^(all|last|last-[1-9][0-9]*|uniform)$"


class DistillParams(Section):
    """Distillation of the student architecture from the teacher (lmpipe/distill/ has the maths).

    The loss is a weighted sum of the terms in `objective`; each term is logged on its own."""

    teacher: Literal["cache", "live"] = Field(
        "cache", description="cache: read the teacher_cache stage's files; live: run the teacher "
        "model (runs/teacher/model) on every batch")
    objective: dict[str, float] = Field(
        default_factory=lambda: {"forward_kl": 0.5, "ce": 0.5},
        description=f"term -> weight; terms: {', '.join(OBJECTIVE_TERMS)}")
    temperature: float = Field(1.0, gt=0.0, description="softens both distributions; logit "
                               "losses are scaled by T^2")
    missing_mass: Literal["residual", "zero"] = Field(
        "residual", description="the teacher mass outside the cached top-k: residual: one extra "
        "bucket, matched against the student's mass outside the top-k; zero: taken as zero")
    jsd_beta: float = Field(0.5, ge=0.0, le=1.0, description="jsd: 0 = forward KL, 1 = reverse KL")
    skew_alpha: float = Field(0.1, ge=0.0, lt=1.0, description="skew_kl / skew_reverse_kl mix")
    sinkhorn_epsilon: float = Field(0.1, gt=0.0, description="sinkhorn: the entropic "
                                    "regularization, in the ground cost's units (cosine "
                                    "distance, 0..2)")
    sinkhorn_iterations: int = Field(50, ge=1, description="sinkhorn: log-domain updates")
    infonce_temperature: float = Field(0.1, gt=0.0, description="hidden_infonce: the "
                                       "temperature of its cosine similarities")
    layers: str | list[list[int]] = Field(
        "last", description="student -> teacher layer pairs for hidden/attention terms: all, last, "
        "last-K, uniform, or an explicit [[student, teacher], ...] list (1 = first block)")
    projector: Literal["identity", "linear", "orthogonal"] = Field(
        "linear", description="maps student hidden states to the teacher's width")
    gradient_conflict: Literal["none", "pcgrad"] = Field(
        "none", description="pcgrad: project conflicting logit / hidden-state gradients")
    gradient_stats: bool = Field(
        False, description="log each weighted term's gradient norm (per target) and the cosine "
        "between every two terms' gradients, every step (one extra backward pass per term)")
    loss_weighting: Literal["fixed", "uncertainty", "gradnorm", "product"] = Field(
        "fixed", description="fixed: the objective's weights; uncertainty: each term's weight "
        "times exp(-s), s a learned log-variance, plus s (Kendall et al. 2018); gradnorm: each "
        "term's weight times a learned multiplier that sets its gradient norm by how fast it "
        "trains (Chen et al. 2018); product: the "
        "product of the terms' per-target means, each to the power of its weight")
    gradnorm_alpha: float = Field(1.5, ge=0.0, description="gradnorm: how strongly a term that "
                                  "trains slower than the others gets a larger gradient (0: "
                                  "equal gradient norms)")
    copy_embeddings: bool = Field(False, description="start from the teacher's token embeddings")
    freeze_embeddings: bool = False
    copy_lm_head: bool = Field(False, description="start from the teacher's lm head (untied only)")
    freeze_lm_head: bool = False
    train: TrainParams = TrainParams()

    @model_validator(mode="after")
    def _no_mesh(self) -> "DistillParams":
        if self.train.mesh is not None:
            # the teacher, its cache and the projectors are whole-model: not split on a mesh yet
            raise ValueError("train.mesh: distillation runs data parallel only (torchrun "
                             "without a mesh); expected train.mesh: null")
        return self

    @model_validator(mode="after")
    def _objective_terms(self) -> "DistillParams":
        for term, weight in self.objective.items():
            if term not in OBJECTIVE_TERMS:
                near = difflib.get_close_matches(term, OBJECTIVE_TERMS, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ValueError(f"objective.{term}: unknown term{hint}; expected one of "
                                 f"{', '.join(OBJECTIVE_TERMS)}")
            if weight < 0:
                raise ValueError(f"objective.{term}: weight {weight} is negative; expected >= 0")
        if not any(w > 0 for w in self.objective.values()):
            raise ValueError("objective: no term has a positive weight; expected at least one")
        if isinstance(self.layers, str) and not re.match(LAYER_MAPS, self.layers):
            raise ValueError(f"layers: {short(self.layers)} is not a layer map; expected all, "
                             "last, last-K, uniform or [[student, teacher], ...]")
        if isinstance(self.layers, list) and (not self.layers or any(
                len(pair) != 2 or min(pair) < 0 for pair in self.layers)):
            raise ValueError(f"layers: {short(self.layers)} is not a list of pairs; expected a "
                             "non-empty list of [student_layer, teacher_layer] indices >= 0")
        if self.gradient_conflict == "pcgrad":
            logit = [t for t, w in self.objective.items() if w > 0 and t not in ACTIVATION_TERMS]
            hidden = [t for t, w in self.objective.items() if w > 0 and t in ACTIVATION_TERMS]
            if not logit or not hidden:
                raise ValueError("gradient_conflict: pcgrad has nothing to reconcile; expected a "
                                 "logit term (ce or a divergence) and a hidden-state term in "
                                 "objective, both with weight > 0")
        if self.loss_weighting != "fixed":
            active = [t for t, w in self.objective.items() if w > 0]
            if len(active) < 2:
                raise ValueError(f"loss_weighting: {self.loss_weighting} weighs terms against "
                                 f"each other; objective has {len(active)} term with weight > "
                                 "0, expected 2 or more")
            if self.gradient_conflict != "none":
                raise ValueError(f"loss_weighting: {self.loss_weighting} with gradient_conflict: "
                                 f"{self.gradient_conflict}; expected one way of combining the "
                                 "terms (set gradient_conflict: none or loss_weighting: fixed)")
        if self.freeze_embeddings and not self.copy_embeddings:
            raise ValueError("freeze_embeddings: would freeze a random embedding; expected "
                             "copy_embeddings: true with it")
        if self.freeze_lm_head and not self.copy_lm_head:
            raise ValueError("freeze_lm_head: would freeze a random lm head; expected "
                             "copy_lm_head: true with it")
        return self

    def hidden_terms(self) -> list[str]:
        return [t for t, w in self.objective.items() if w > 0 and t in ACTIVATION_TERMS]


class QuantizeParams(Section):
    """Ternary (BitNet b1.58) quantization of the distilled student, and an int8 baseline."""

    method: Literal["qat", "ptq"] = Field(
        "qat", description="qat: fine-tune the distilled student through ternary weights with the "
        "distill objective (its PTQ is exported beside it for comparison); ptq: ternarize as is")
    skip_modules: list[str] = Field(default_factory=lambda: ["lm_head"],
                                    description="linear layers that stay full precision")
    int8_baseline: bool = Field(True, description="also export an int8 weight-only model")
    train: TrainParams = Field(
        default_factory=lambda: TrainParams(steps=600, lr=1e-3, warmup_steps=50, qat=True,
                                            qat_warmup_steps=200),
        description="method qat: the fine-tuning run (qat is forced on)")
