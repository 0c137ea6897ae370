"""The combined distillation objective: a weighted sum of terms, each logged on its own.

    loss = sum_term weight_term * term,   term in ce, logit divergences, hidden-state terms

With `loss_weighting: uncertainty` (Kendall, Gal and Cipolla 2018) each term gets a learned
log-variance s_term, trained with the student:

    loss = sum_term exp(-s_term) * weight_term * term + s_term,   per target

whose minimum over s_term is at exp(s_term) = weight_term * term: a term that stays large is
weighed down, one that falls is weighed up, each logged as `weight_<term>` =
weight_term * exp(-s_term).

With `loss_weighting: gradnorm` (Chen et al. 2018, gradnorm.py) each term's weight is multiplied
by a learned w_term, trained so each term's gradient norm follows its relative training rate
(`gradnorm_alpha`), logged as `weight_<term>` = weight_term * w_term.

With `loss_weighting: product` the terms multiply, each per-target mean m_term = term / targets
to the power of its weight:

    loss = prod_term m_term^weight_term,   per target

so log loss = sum_term weight_term * log m_term and the gradient is loss * sum_term weight_term *
grad(m_term) / m_term: each term's gradient scaled by the inverse of its own size, the balance a
sum of log-losses gives. It is defined while every term is positive (a term is floored at 1e-12
a target, where a divergence reaches an exact match); with several micro-batches or processes
the product is taken over each micro-batch's means.

With `gradient_stats: true` every step also logs, for the study of how the terms combine, each
weighted term's gradient norm over the student's parameters per target (`grad_norm_<term>`) and
the cosine between every two terms' gradients (`grad_cosine_<term>__<term>`), at the cost of one
extra backward pass per term.

Logit divergences are computed on the aligned support (support.py) at temperature T and scaled
by T^2 (a truncated teacher's rest bucket tempered as sum_j p_j^(1/T) over its tail, for every
term alike); every term is summed over target positions only (padding and prompt tokens never count),
and the training loop divides by the global number of targets. Each term is logged as
`loss_<term>` (per target, unweighted). With `gradient_conflict: pcgrad` the logit terms' and
hidden terms' gradients are combined by gradient surgery and their cosine logged as `grad_cosine`.
"""

from __future__ import annotations

from functools import partial
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from lmpipe.data.batching import Batch
from lmpipe.distill.attention_kl import attention_kl, head_mean_rows
from lmpipe.distill.cakld import teacher_confidence
from lmpipe.distill.gradnorm import GradNormWeights, gradnorm_loss
from lmpipe.distill.hidden import hidden_cosine, hidden_infonce, hidden_mse
from lmpipe.distill.layers import layer_pairs
from lmpipe.distill.pcgrad import surgery_loss
from lmpipe.distill.projector import make_projector
from lmpipe.distill.registry import LOGIT_LOSSES, LossOptions
from lmpipe.distill.sinkhorn import support_cost, token_cost
from lmpipe.distill.support import aligned
from lmpipe.distill.teacher import CachedTeacher, TeacherSource
from lmpipe.core.section import ConfigError
from lmpipe.distill.params import DistillParams
from lmpipe.distill.terms import ACTIVATION_TERMS, HIDDEN_STATE_TERMS, TEACHER_MASS_TERMS
from lmpipe.model.hidden_states import ATTENTION_FREE, layer_states


HIDDEN_LOSSES = {"hidden_mse": hidden_mse, "hidden_cosine": hidden_cosine}


def _at_targets(tensor: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows of (b, T, ...) at the target positions (b, T-1), in row-major order; a view when
    every position is a target (pretraining windows), which spares the backward a scatter."""
    shifted = tensor[:, :-1]
    if bool(targets.all()):
        return shifted.reshape(-1, *tensor.shape[2:])
    return shifted[targets]


def _refuse_attention_free(dp: DistillParams, teacher: TeacherSource, student_config) -> None:
    """attention_kl needs an attention map on both sides: mamba, mamba2 and hawk have none (an
    imported teacher is checked here; lmpipe/params/arch_support.py refuses trained ones earlier)."""
    teacher_config = getattr(getattr(teacher, "model", None), "config", None)
    for side, config in (("student", student_config), ("teacher", teacher_config)):
        if config is not None and config.model_type in ATTENTION_FREE:
            raise ConfigError(f"distill.objective.attention_kl = {dp.objective['attention_kl']:g}: "
                              f"the {side} ({config.model_type}) has no attention map to compare; "
                              "set it to 0 (hidden_mse or hidden_cosine compare its layers)")


class DistillObjective:
    """Callable objective for `lmpipe.train.loop`: (model, batch) -> (summed loss, logged parts)."""

    per_step_metrics = ("grad_cosine", "cakld_confidence")

    def __init__(self, dp: DistillParams, teacher: TeacherSource, student_config) -> None:
        self.dp, self.teacher = dp, teacher
        self.terms = {t: w for t, w in dp.objective.items() if w > 0}
        if teacher.vocab_size != student_config.vocab_size:
            raise ConfigError(f"distill: the teacher's vocabulary has {teacher.vocab_size} ids, the "
                              f"student's {student_config.vocab_size}; distillation needs a shared "
                              "tokenizer")
        truncated = teacher.top_k is not None and teacher.top_k < teacher.vocab_size
        zero_tail = [t for t in self.terms if t in TEACHER_MASS_TERMS
                     or (t == "jsd" and dp.jsd_beta == 1.0)]
        if truncated and dp.missing_mass == "zero" and zero_tail:
            raise ConfigError(f"distill.objective {zero_tail} with missing_mass = zero: the student "
                              f"puts mass outside the teacher's top-{teacher.top_k}, where the "
                              "teacher's is taken as zero, so the divergence is infinite; use "
                              "distill.missing_mass = residual")
        if any(t not in ACTIVATION_TERMS and t != "ce" for t in self.terms):
            # a cache holds its tempered tail at one temperature: refuse another before training
            teacher.check_temperature(dp.temperature, dp.missing_mass)
        hidden_terms = [t for t in self.terms if t in HIDDEN_STATE_TERMS]
        self.pairs = (layer_pairs(dp.layers, student_config.num_hidden_layers, teacher.num_layers)
                      if hidden_terms or "attention_kl" in self.terms else [])
        self.hidden_terms = hidden_terms
        self.teacher_hidden = tuple(sorted({t for _, t in self.pairs})) if hidden_terms else ()
        missing = set(self.teacher_hidden) - set(teacher.cached_hidden_layers)
        if missing:
            raise ConfigError(f"distill.layers = {dp.layers!r} compares teacher hidden states "
                              f"{sorted(missing)}, which the cache does not hold (it has "
                              f"{list(teacher.cached_hidden_layers)}); add them to "
                              "teacher_cache.hidden_layers")
        self.attention_blocks = ()
        if "attention_kl" in self.terms:
            _refuse_attention_free(dp, teacher, student_config)
            if any(s == 0 or t == 0 for s, t in self.pairs):
                raise ConfigError(f"distill.layers = {dp.layers!r}: layer 0 is the embedding "
                                  "output and has no attention map")
            self.attention_blocks = tuple(sorted({t for _, t in self.pairs}))
            uncached = set(self.attention_blocks) - set(teacher.cached_attention_layers)
            if uncached:
                raise ConfigError(f"distill.objective.attention_kl compares teacher blocks "
                                  f"{sorted(uncached)}, whose attention the cache does not hold "
                                  f"(it has {list(teacher.cached_attention_layers)}); add them to "
                                  "teacher_cache.attention_layers (documents only) or use "
                                  "distill.teacher = live")
            if isinstance(teacher, CachedTeacher) and dp.train.sampling != "documents":
                raise ConfigError("distill.objective.attention_kl from the cache needs "
                                  "distill.train.sampling = documents (cached rows start at each "
                                  "document's first token); use distill.teacher = live for windows")
            teacher.use_eager_attention()
        self.student_width = student_config.hidden_size
        self.projectors: nn.ModuleList | None = None
        self.log_variances: nn.ParameterDict | None = None
        self.gradnorm: GradNormWeights | None = None
        self.token_cost: torch.Tensor | None = None  # sinkhorn's ground cost, (V, V)
        extra: tuple[str, ...] = ()
        if dp.loss_weighting in ("uncertainty", "gradnorm"):
            extra += tuple(f"weight_{term}" for term in self.terms)
        if dp.gradient_stats:
            extra += tuple(f"grad_norm_{term}" for term in self.terms) + tuple(
                f"grad_cosine_{a}__{b}" for a, b in combinations(self.terms, 2))
        if extra:
            self.per_step_metrics = type(self).per_step_metrics + extra
        self.model: nn.Module | None = None

    # -- the student's extra trainable parts ---------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Give the student what the objective trains with it (projectors), before the
        optimizer is built; checkpoints then carry them too."""
        self.model = model
        if self.hidden_terms:
            self.projectors = nn.ModuleList(
                make_projector(self.dp.projector, self.student_width, self.teacher.hidden_size)
                for _ in self.pairs)
            model.add_module("distill_projectors", self.projectors)
        if self.dp.loss_weighting == "uncertainty":
            self.log_variances = nn.ParameterDict(
                {term: nn.Parameter(torch.zeros(())) for term in self.terms})
            model.add_module("distill_loss_weights", self.log_variances)
        if self.dp.loss_weighting == "gradnorm":
            self.gradnorm = GradNormWeights(list(self.terms))
            model.add_module("distill_loss_weights", self.gradnorm)
        if self.attention_blocks:
            model.set_attn_implementation("eager")

    @property
    def single_process_only(self) -> str | None:
        """Why this objective cannot run data-parallel, if it cannot: its projectors and gradient
        surgery live outside the DDP-wrapped forward, so DDP would not average their gradients."""
        if self.dp.gradient_conflict == "pcgrad":
            return "distill.gradient_conflict = pcgrad"
        if self.log_variances is not None or self.gradnorm is not None:
            return f"distill.loss_weighting = {self.dp.loss_weighting}"
        if self.dp.gradient_stats:
            return "distill.gradient_stats = true"
        if self.projectors is not None and any(True for _ in self.projectors.parameters()):
            return f"distill.projector = {self.dp.projector}"
        return None

    def detach(self, model: nn.Module) -> None:
        """Remove the projectors and loss weights before the student is saved as a plain
        language model."""
        for name in ("distill_projectors", "distill_loss_weights"):
            if hasattr(model, name):
                delattr(model, name)

    # -- the loss --------------------------------------------------------------------------------
    def components(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor],
                                                                 dict[str, torch.Tensor]]:
        """Each term summed over target positions (unweighted), and per-step diagnostics."""
        targets = batch.target_mask > 0
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    output_hidden_states=bool(self.hidden_terms),
                    output_attentions=bool(self.attention_blocks))
        signals = self.teacher.signals(batch, targets, self.teacher_hidden, self.attention_blocks,
                                       self.dp.temperature)
        terms: dict[str, torch.Tensor] = {}
        diagnostics: dict[str, torch.Tensor] = {}
        # one (targets x vocabulary) view of the logits serves every logit term: with a large
        # vocabulary each extra slice of the full logits costs a full-size zero fill in backward
        rows = _at_targets(out.logits, targets)
        labels = batch.input_ids[:, 1:][targets]
        dp = self.dp
        logit_terms = [t for t in self.terms if t != "ce" and t not in ACTIVATION_TERMS]
        tempered = (torch.log_softmax(rows.float() / dp.temperature, dim=-1)
                    if logit_terms else None)
        if "ce" in self.terms:
            plain = (tempered if tempered is not None and dp.temperature == 1.0
                     else torch.log_softmax(rows.float(), dim=-1))
            per_token = F.nll_loss(plain, labels, reduction="none")
            terms["ce"] = (per_token * batch.target_mask[targets]).sum()
        if logit_terms:
            scale = dp.temperature ** 2
            log_p, log_q = aligned(tempered, signals.distribution, dp.temperature, dp.missing_mass)
            options = LossOptions(dp.jsd_beta, dp.skew_alpha,
                                  sinkhorn_epsilon=dp.sinkhorn_epsilon,
                                  sinkhorn_iterations=dp.sinkhorn_iterations)
            if "sinkhorn" in logit_terms:
                if self.token_cost is None:  # the teacher's embeddings: read once
                    self.token_cost = token_cost(self.teacher.token_embeddings())
                options.cost = support_cost(self.token_cost.to(rows.device),
                                            signals.distribution.ids)
            if "cakld" in logit_terms:
                options.confidence = teacher_confidence(
                    signals.distribution.label_logprobs(labels))
                diagnostics["cakld_confidence"] = options.confidence
            for term in logit_terms:
                terms[term] = scale * LOGIT_LOSSES[term](log_p, log_q, options).sum()
        # the same layer numbers for every architecture (lmpipe/model/hidden_states.py); DDP
        # wraps the student, whose config is its module's
        states = (layer_states(getattr(model, "module", model), batch.input_ids, out)
                  if self.hidden_terms else ())
        for term in self.hidden_terms:
            loss = (partial(hidden_infonce, temperature=dp.infonce_temperature)
                    if term == "hidden_infonce" else HIDDEN_LOSSES[term])
            per_pair = [loss(projector(_at_targets(states[s], targets)),
                             signals.hidden[t]).sum()
                        for (s, t), projector in zip(self.pairs, self.projectors)]
            terms[term] = torch.stack(per_pair).mean()
        if self.attention_blocks:
            per_pair = [attention_kl(signals.attention_rows[t],
                                     head_mean_rows(out.attentions[s - 1], targets)).sum()
                        for s, t in self.pairs]
            terms["attention_kl"] = torch.stack(per_pair).mean()
        return terms, diagnostics

    def __call__(self, model: nn.Module, batch: Batch):
        terms, diagnostics = self.components(model, batch)
        parts = {f"loss_{term}": value.detach() for term, value in terms.items()}
        parts.update(diagnostics)
        weighted = {term: self.terms[term] * value for term, value in terms.items()}
        if self.dp.gradient_stats:
            parts.update(self.gradient_stats(weighted, batch.target_mask.sum()))
        if self.log_variances is not None:
            return self.uncertainty_weighted(weighted, batch.target_mask.sum(), parts), parts
        if self.gradnorm is not None:
            return self.gradnorm_weighted(weighted, batch.target_mask.sum(), parts), parts
        if self.dp.loss_weighting == "product":
            return product_of_terms(terms, self.terms, batch.target_mask.sum()), parts
        if self.dp.gradient_conflict == "pcgrad":
            logit = sum(v for t, v in weighted.items() if t not in ACTIVATION_TERMS)
            hidden = sum(v for t, v in weighted.items() if t in ACTIVATION_TERMS)
            params = [p for p in self.model.parameters() if p.requires_grad]
            total, cosine = surgery_loss(params, logit, hidden)
            parts["grad_cosine"] = cosine
            return total, parts
        return sum(weighted.values()), parts

    def gradient_stats(self, weighted: dict[str, torch.Tensor],
                       targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each weighted term's gradient norm per target and the cosine between every two
        terms' gradients, over the student's trainable parameters (module docstring)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        flat = {}
        for term, value in weighted.items():
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            flat[term] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                    for g, p in zip(grads, params)])
        stats = {f"grad_norm_{term}": (g.norm() / targets.clamp(min=1)).detach()
                 for term, g in flat.items()}
        for a, b in combinations([t for t in self.terms if t in flat], 2):  # as logged
            stats[f"grad_cosine_{a}__{b}"] = (flat[a] @ flat[b] / (
                flat[a].norm() * flat[b].norm()).clamp_min(1e-30)).detach()
        return stats

    def uncertainty_weighted(self, weighted: dict[str, torch.Tensor], targets: torch.Tensor,
                             parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum_term exp(-s_term) * weighted_term + s_term * targets (module docstring): the terms
        are sums over the batch's `targets` and the loop divides by the targets, so s_term counts
        once a target; logs each term's effective weight into `parts`."""
        total = torch.zeros((), device=targets.device)
        for term, value in weighted.items():
            s = self.log_variances[term]
            total = total + torch.exp(-s) * value + s * targets
            parts[f"weight_{term}"] = (self.terms[term] * torch.exp(-s)).detach()
        return total


    def gradnorm_weighted(self, weighted: dict[str, torch.Tensor], targets: torch.Tensor,
                          parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """GradNorm's loss (gradnorm.py) over the student's own trainable parameters; logs each
        term's effective weight into `parts`."""
        self.gradnorm.renormalize()
        own = {id(p) for p in self.gradnorm.parameters()}
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in own]
        total, _ = gradnorm_loss(self.gradnorm, [weighted[t] for t in self.gradnorm.terms],
                                 params, targets, self.dp.gradnorm_alpha)
        for term, multiplier in zip(self.gradnorm.terms, self.gradnorm.weights.detach()):
            parts[f"weight_{term}"] = self.terms[term] * multiplier
        return total


def product_of_terms(terms: dict[str, torch.Tensor], weights: dict[str, float],
                     targets: torch.Tensor) -> torch.Tensor:
    """prod_term (term / targets)^weight times `targets` (the loop divides by the targets):
    `terms` are sums over the batch's targets (module docstring)."""
    count = targets.clamp(min=1)
    log_product = sum(weights[term] * torch.log((value / count).clamp_min(1e-12))
                      for term, value in terms.items())
    return torch.exp(log_product) * count


def build_objective(dp: DistillParams, teacher: TeacherSource,
                    student: nn.Module) -> DistillObjective:
    """The objective for `dp`, attached to `student` (call before building the optimizer)."""
    objective = DistillObjective(dp, teacher, student.config)
    objective.attach(student)
    return objective
