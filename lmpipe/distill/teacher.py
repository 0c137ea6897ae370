"""One interface to the teacher's signals, whether they come from the cache or a live model.

An objective asks `teacher.signals(batch, targets, hidden_layers, attention_layers)` and gets,
at the batch's target positions (row-major order of `targets`), the teacher's next-token
distribution, hidden states of the requested layers and head-averaged attention rows. A
`CachedTeacher` reads them from the teacher_cache stage's files by flat train-stream position; a
`LiveTeacher` runs the teacher model on the same batch. Every objective works with both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmpipe.batching import Batch
from lmpipe.distill.attention_kl import head_mean_rows
from lmpipe.distill.support import TeacherDistribution
from lmpipe.teacher_cache import TeacherCache, top_k_with_missing


@dataclass
class TeacherSignals:
    distribution: TeacherDistribution
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)      # layer -> (n, d_t)
    attention_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> (n, T)


class CachedTeacher:
    """Teacher signals read from a `TeacherCache` (memory-mapped, no teacher compute)."""

    def __init__(self, cache: TeacherCache) -> None:
        self.cache = cache
        self.vocab_size = cache.manifest["vocab_size"]
        self.num_layers = cache.manifest["teacher_layers"]
        self.hidden_size = cache.manifest["hidden_size"]
        self.top_k = cache.top_k
        self.cached_hidden_layers = tuple(cache.manifest["hidden_layers"])
        self.cached_attention_layers = tuple(cache.manifest.get("attention_layers", []))

    def use_eager_attention(self) -> None:
        """Cached attention rows need no teacher compute."""

    def signals(self, batch: Batch, targets: torch.Tensor, hidden_layers: tuple[int, ...] = (),
                attention_layers: tuple[int, ...] = ()) -> TeacherSignals:
        where = batch.positions[:, :-1][targets.cpu()].numpy()
        rows = self.cache.rows(where, hidden_layers, attention_layers)
        device = batch.input_ids.device
        width = batch.input_ids.size(1)  # documents start at column 0: key j is column j
        attention = {block: torch.nn.functional.pad(a, (0, width - a.size(1))).to(device)
                     for block, a in rows.attention.items()}
        return TeacherSignals(
            TeacherDistribution(rows.logprobs.to(device), rows.ids.to(device),
                                rows.log_missing.to(device)),
            {layer: h.to(device) for layer, h in rows.hidden.items()}, attention)


class LiveTeacher:
    """Teacher signals computed by running the teacher model on each batch (no gradient)."""

    def __init__(self, model: torch.nn.Module, top_k: int | None = None) -> None:
        """`top_k`: truncate like a cache would (None keeps the full distribution)."""
        self.model = model.eval().requires_grad_(False)
        self.vocab_size = model.config.vocab_size
        self.num_layers = model.config.num_hidden_layers
        self.hidden_size = model.config.hidden_size
        self.top_k = top_k
        self.cached_hidden_layers = tuple(range(self.num_layers + 1))
        self.cached_attention_layers = tuple(range(1, self.num_layers + 1))

    def use_eager_attention(self) -> None:
        """Attention weights are only returned by the eager implementation."""
        self.model.set_attn_implementation("eager")

    @torch.no_grad()
    def signals(self, batch: Batch, targets: torch.Tensor, hidden_layers: tuple[int, ...] = (),
                attention_layers: tuple[int, ...] = ()) -> TeacherSignals:
        device = batch.input_ids.device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        out = self.model(input_ids=batch.input_ids, attention_mask=(batch.positions >= 0).long(),
                         output_hidden_states=bool(hidden_layers),
                         output_attentions=bool(attention_layers))
        logprobs = torch.log_softmax(out.logits[:, :-1][targets].float(), dim=-1)
        if self.top_k is None or self.top_k >= self.vocab_size:
            distribution = TeacherDistribution(logprobs)
        else:
            ids, values, missing = top_k_with_missing(logprobs, self.top_k)
            distribution = TeacherDistribution(values, ids, missing)
        hidden = {layer: out.hidden_states[layer][:, :-1][targets].float() for layer in hidden_layers}
        attention = {block: head_mean_rows(out.attentions[block - 1], targets)
                     for block in attention_layers}
        return TeacherSignals(distribution, hidden, attention)


TeacherSource = CachedTeacher | LiveTeacher
