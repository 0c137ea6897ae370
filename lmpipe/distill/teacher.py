"""One interface to the teacher's signals, whether they come from the cache or a live model.

An objective asks `teacher.signals(batch, targets, hidden_layers, attention_layers, temperature)`
and gets, at the batch's target positions (row-major order of `targets`), the teacher's
next-token distribution, hidden states of the requested layers and head-averaged attention rows.
A `CachedTeacher` reads them from the teacher_cache stage's files by flat train-stream position; a
`LiveTeacher` runs the teacher model on the same batch. Every objective works with both.

A truncated distribution (top-k < V) carries its tail outside the top-k at T = 1 (the missing
mass m) and, for a temperature T != 1, tempered: log S_T = log sum_{j not in top-k} p_j^(1/T)
(lmpipe/distill/support.py). The live teacher computes S_T at the asked T; the cache holds it at
the one T it was written for, and `check_temperature` refuses any other before training starts.

The teacher reads the student's batches with its own attention mask (`attention`: its
`teacher.train.attention`; for prefix-LM the tokens it did not write come from the train split's
loss mask, lmpipe/data/attention_masks.py), as the teacher cache does when it writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors.torch import load_file

from lmpipe.data.attention_masks import model_attention_mask
from lmpipe.data.batching import Batch
from lmpipe.distill.attention_kl import head_mean_rows
from lmpipe.distill.cache.format import log_tempered_tail, top_k_with_missing
from lmpipe.distill.cache.read import TeacherCache
from lmpipe.distill.support import TeacherDistribution
from lmpipe.model.hidden_states import layer_states
from lmpipe.core.artifacts import file_sha256
from lmpipe.core.section import ConfigError


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
        self.tail_temperature = cache.tail_temperature

    def use_eager_attention(self) -> None:
        """Cached attention rows need no teacher compute."""

    def token_embeddings(self) -> torch.Tensor:
        """The teacher's input embeddings (V, d), which the cache keeps beside its rows, checked
        against the manifest's sha256."""
        entry = self.cache.manifest.get("embeddings")
        path = self.cache.folder / (entry or {}).get("file", "embeddings.safetensors")
        if entry is None or not path.is_file():
            raise ConfigError(f"distill.objective.sinkhorn: the teacher cache {self.cache.folder} "
                              "holds no token embeddings (written before they were kept); "
                              "rebuild it (dvc repro -f teacher_cache) or use distill.teacher = "
                              "live")
        if file_sha256(path) != entry["sha256"]:
            raise ConfigError(f"{path}: its sha256 is not the manifest's; rebuild the cache")
        return load_file(str(path))["embeddings"]

    def check_temperature(self, temperature: float, missing_mass: str = "residual") -> None:
        """Refuse a distill temperature whose tempered tail the cache does not hold (only a
        truncated cache with the residual bucket needs it)."""
        if (missing_mass != "residual" or self.top_k >= self.vocab_size
                or temperature in (1.0, self.tail_temperature)):
            return
        held = ("T = 1 only" if self.tail_temperature == 1.0
                else f"T = 1 and T = {self.tail_temperature:g}")
        raise ConfigError(
            f"distill.temperature = {temperature:g}: the teacher cache {self.cache.folder} holds "
            f"the tail outside its top-{self.top_k} tempered at {held} (manifest "
            "tail_temperature), and sum_j p_j^(1/T) over the tail cannot be derived from its "
            f"mass; rebuild the cache for this temperature (dvc repro -f teacher_cache, with "
            "distill.temperature among the stage's params), or use distill.teacher = live")

    def signals(self, batch: Batch, targets: torch.Tensor, hidden_layers: tuple[int, ...] = (),
                attention_layers: tuple[int, ...] = (), temperature: float = 1.0
                ) -> TeacherSignals:
        """`temperature`: only checked here (the cache holds its tail at one T, see
        `check_temperature`); the tempering itself is support.aligned's."""
        where = batch.positions[:, :-1][targets.cpu()].numpy()
        rows = self.cache.rows(where, hidden_layers, attention_layers)
        device = batch.input_ids.device
        width = batch.input_ids.size(1)  # documents start at column 0: key j is column j
        attention = {block: torch.nn.functional.pad(a, (0, width - a.size(1))).to(device)
                     for block, a in rows.attention.items()}
        log_tail = None if rows.log_tail is None else rows.log_tail.to(device)
        return TeacherSignals(
            TeacherDistribution(rows.logprobs.to(device), rows.ids.to(device),
                                rows.log_missing.to(device), log_tail,
                                self.tail_temperature if log_tail is not None else None),
            {layer: h.to(device) for layer, h in rows.hidden.items()}, attention)


class LiveTeacher:
    """Teacher signals computed by running the teacher model on each batch (no gradient)."""

    def __init__(self, model: torch.nn.Module, top_k: int | None = None,
                 attention: str = "causal", token_mask: np.ndarray | None = None) -> None:
        """`top_k`: truncate like a cache would (None keeps the full distribution).
        `attention`: the teacher's `train.attention`; `token_mask`: for a prefix-LM teacher
        trained with `loss_on: mask`, the loss mask of the split the batches index (the train
        split's `TokenSplit.mask`), None when it trained with `loss_on: all`."""
        if attention not in ("causal", "prefix_lm"):
            raise ValueError(f"attention = {attention!r}: expected 'causal' or 'prefix_lm'")
        self.model = model.eval().requires_grad_(False)
        self.attention, self.token_mask = attention, token_mask
        self.vocab_size = model.config.vocab_size
        self.num_layers = model.config.num_hidden_layers
        self.hidden_size = model.config.hidden_size
        self.top_k = top_k
        self.cached_hidden_layers = tuple(range(self.num_layers + 1))
        self.cached_attention_layers = tuple(range(1, self.num_layers + 1))

    def use_eager_attention(self) -> None:
        """Attention weights are only returned by the eager implementation."""
        self.model.set_attn_implementation("eager")

    def token_embeddings(self) -> torch.Tensor:
        """The teacher's input embeddings (V, d)."""
        return self.model.get_input_embeddings().weight.detach().float()

    def check_temperature(self, temperature: float, missing_mass: str = "residual") -> None:
        """The live teacher tempers its tail exactly at any temperature."""

    @torch.no_grad()
    def signals(self, batch: Batch, targets: torch.Tensor, hidden_layers: tuple[int, ...] = (),
                attention_layers: tuple[int, ...] = (), temperature: float = 1.0
                ) -> TeacherSignals:
        """`temperature`: the T at which a truncated distribution's tail is also tempered."""
        device = batch.input_ids.device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        mask = model_attention_mask(self.attention, batch.positions, self.token_mask)
        out = self.model(input_ids=batch.input_ids, attention_mask=mask,
                         output_hidden_states=bool(hidden_layers),
                         output_attentions=bool(attention_layers))
        logprobs = torch.log_softmax(out.logits[:, :-1][targets].float(), dim=-1)
        if self.top_k is None or self.top_k >= self.vocab_size:
            distribution = TeacherDistribution(logprobs)
        else:
            ids, values, missing = top_k_with_missing(logprobs, self.top_k)
            tail = None if temperature == 1.0 else log_tempered_tail(logprobs, ids, temperature)
            distribution = TeacherDistribution(values, ids, missing, tail,
                                               None if tail is None else temperature)
        states = layer_states(self.model, batch.input_ids, out) if hidden_layers else ()
        hidden = {layer: states[layer][:, :-1][targets].float() for layer in hidden_layers}
        attention = {block: head_mean_rows(out.attentions[block - 1], targets)
                     for block in attention_layers}
        return TeacherSignals(distribution, hidden, attention)


TeacherSource = CachedTeacher | LiveTeacher
