"""Probes: watch activations and gradients at named points of a model while it trains, for every
architecture (llama, mamba, mamba2, hawk).

A `Probe` is an identity module: called on the tensor leaving a point of the network, it returns
that very tensor and records it, and, through a tensor hook, the gradient flowing back through it.
Named points (`train.probes.points` picks the sites, null = every site the arch has; `layers` the
blocks):

    embeddings                 the token embeddings (depth 0)
    layers.<i>.attention       llama: block i's attention output, before the residual add
                               (depth i+1)
    layers.<i>.attention_weights  llama: block i's attention rows, recomputed on the side from
                               its inputs for the batch's first 4 sequences (only their entropy is
                               kept; forward only)
    layers.<i>.mixer           mamba, mamba2: block i's SSM mixer output; hawk: block i's temporal
                               block (convolution and RG-LRU recurrence) output; before the
                               residual add
    layers.<i>.mlp             llama, hawk: block i's MLP output, before the residual add
    layers.<i>.residual        the residual stream after block i (what block i+1 reads)
    logits                     the output logits (depth n_layers+1)

    arch (config.model_type)   sites
    llama                      embeddings, attention, attention_weights, mlp, residual, logits
    mamba, mamba2              embeddings, mixer, residual, logits
    hawk (recurrent_gemma)     embeddings, mixer, mlp, residual, logits

Where each lives is `LAYOUTS`. Two details of hawk: `embeddings` is the lookup before
RecurrentGemma multiplies it by sqrt(d_model), and `logits` are the model's output, after its
soft cap (tanh(x / 30) * 30), the logits the loss reads. A site the arch lacks is refused before
any compute (lmpipe/params/arch_support.py) and here again for a direct caller.

Probes are inserted as forward hooks only for the steps they record (every `every` steps and the
steps of the dump window) and removed right after, so on every other step, and whenever probes are
off, the model runs exactly the code it runs without them. A recorded step writes one line per
point and kind (`forward` or `grad`) to `probes.jsonl` in the run folder: step, point, site, layer,
depth, kind and the statistics of lmpipe/train/probe_stats.py. With grad accumulation only a step's
first micro-batch is recorded. Steps inside `dump_steps: [first, last]` also save the raw tensors to
`probes/step_<n>.safetensors` (keys `<point>.<kind>`) for offline analysis.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from lmpipe.core.jsonl import read_jsonl
from lmpipe.core.run_folder import PROBES_FILE
from lmpipe.train.params import ProbeParams, probe_sites
from lmpipe.train.probe_stats import attention_entropy, summary_stats

ATTENTION_SEQUENCES = 4


@dataclass(frozen=True)
class Layout:
    """Where the probe points of one architecture live: module paths from the CausalLM model."""

    embeddings: str
    blocks: str                            # the ModuleList of blocks
    sites: dict[str, str]                  # block site -> submodule whose output it is ("" the
                                           # block itself); in the order they are hooked
    logits: str = "lm_head"
    logits_field: str | None = None        # read the output's attribute (a ModelOutput)
    attention: str | None = None           # the attention module attention_weights recompute


MAMBA_LAYOUT = Layout("backbone.embeddings", "backbone.layers", {"mixer": "mixer", "residual": ""})
LAYOUTS: dict[str, Layout] = {  # by config.model_type (lmpipe/core/archs.py)
    "llama": Layout("model.embed_tokens", "model.layers",
                    {"attention": "self_attn", "mlp": "mlp", "residual": ""},
                    attention="self_attn"),
    "mamba": MAMBA_LAYOUT,
    "mamba2": MAMBA_LAYOUT,
    # the temporal block returns (output, None); RecurrentGemma soft-caps lm_head's output in
    # the CausalLM's forward, so its logits are read from the whole model's output
    "recurrent_gemma": Layout("model.embed_tokens", "model.layers",
                              {"mixer": "temporal_block", "mlp": "mlp_block", "residual": ""},
                              logits="", logits_field="logits"),
}


class Probe(torch.nn.Module):
    """Identity on the tensor passing by; hands it (and later its gradient) to the recorder."""

    def __init__(self, name: str, site: str, layer: int | None, depth: int,
                 recorder: "ProbeRecorder") -> None:
        super().__init__()
        self.name, self.site, self.layer, self.depth = name, site, layer, depth
        self.recorder = recorder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.recorder.see(self, "forward", x)
        if self.recorder.params.grads and x.requires_grad:
            # returning None keeps the gradient exactly as it was
            x.register_hook(lambda grad: self.recorder.see(self, "grad", grad))
        return x


def _output_hook(probe: Probe, field_name: str | None = None):
    def hook(module, args, output):
        if field_name is not None:
            output = getattr(output, field_name)
        probe(output[0] if isinstance(output, tuple) else output)  # returns None: output unchanged
    return hook


def attention_weights(attention: torch.nn.Module, hidden: torch.Tensor,
                      position_embeddings: tuple[torch.Tensor, torch.Tensor],
                      mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention rows (B, heads, T, T) of a Llama attention module, recomputed from its
    inputs without touching the forward pass (which may use a fused kernel that returns none)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    q = attention.q_proj(hidden).view(shape).transpose(1, 2)
    k = attention.k_proj(hidden).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attention.num_key_value_groups)
    scores = (q @ k.transpose(-1, -2)) * attention.scaling
    width = scores.size(-1)
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        allowed = mask if mask.dtype == torch.bool else None
        if allowed is None:
            scores = scores + mask[..., :width]
        else:
            scores = scores.masked_fill(~allowed[..., :width], float("-inf"))
    else:
        causal = torch.ones(scores.size(-2), width, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    return torch.softmax(scores.float(), dim=-1)


class ProbeRecorder:
    """Probes at the configured points of `model` (any architecture of `LAYOUTS`), attached only
    while `recording(step)` runs."""

    def __init__(self, model: torch.nn.Module, params: ProbeParams,
                 folder: Path | None = None) -> None:
        self.model, self.params, self.folder = model, params, folder
        kind = getattr(model.config, "model_type", "llama")
        # a model type lmpipe does not build (an imported model) is probed as a llama
        layout = LAYOUTS.get(kind, LAYOUTS["llama"])
        wanted, missing = probe_sites(kind if kind in LAYOUTS else "llama", params.points)
        if missing:
            raise ValueError(f"train.probes.points: {missing} are not sites of a {kind} model; "
                             f"expected some of {list(probe_sites(kind, None)[0])}, or null for "
                             "all")
        layers = model.get_submodule(layout.blocks)
        chosen = range(len(layers)) if params.layers is None else params.layers
        bad = [i for i in chosen if not 0 <= i < len(layers)]
        if bad:
            raise ValueError(f"train.probes.layers: {bad} out of range (the model has "
                             f"{len(layers)} blocks)")
        sites = set(wanted)
        # (module whose output the probe sees, probe, attribute of the output it reads)
        self.points: list[tuple[torch.nn.Module, Probe, str | None]] = []
        if "embeddings" in sites:
            self.points.append((model.get_submodule(layout.embeddings),
                                Probe("embeddings", "embeddings", None, 0, self), None))
        for i in chosen:
            block = layers[i]
            for site, path in layout.sites.items():
                if site in sites:
                    self.points.append((block.get_submodule(path),
                                        Probe(f"layers.{i}.{site}", site, i, i + 1, self), None))
        if "logits" in sites:
            self.points.append((model.get_submodule(layout.logits),
                                Probe("logits", "logits", None, len(layers) + 1, self),
                                layout.logits_field))
        self.weight_probes = [(layers[i].get_submodule(layout.attention),
                               Probe(f"layers.{i}.attention_weights", "attention_weights", i,
                                     i + 1, self))
                              for i in chosen if "attention_weights" in sites]
        self.step: int | None = None
        self.records: list[dict[str, Any]] = []
        self.raw: dict[str, torch.Tensor] = {}
        self._seen: set[tuple[str, str]] = set()

    @property
    def names(self) -> list[str]:
        return [p.name for _, p, _ in self.points] + [p.name for _, p in self.weight_probes]

    def due(self, step: int) -> bool:
        """Whether training step `step` (1-based: the step about to be taken) is recorded."""
        return step % self.params.every == 0 or self._dumping(step)

    def _dumping(self, step: int) -> bool:
        window = self.params.dump_steps
        return bool(window) and window[0] <= step <= window[1]

    def see(self, probe: Probe, kind: str, tensor: torch.Tensor) -> None:
        if self.step is None or (probe.name, kind) in self._seen:
            return
        self._seen.add((probe.name, kind))
        record = {"step": self.step, "point": probe.name, "site": probe.site, "layer": probe.layer,
                  "depth": probe.depth, "kind": kind}
        if probe.site == "attention_weights":
            record |= attention_entropy(tensor)
        else:
            record |= summary_stats(tensor)
        self.records.append(record)
        if self._dumping(self.step):
            self.raw[f"{probe.name}.{kind}"] = tensor.detach().to("cpu", copy=True).contiguous()

    def _weights_hook(self, probe: Probe):
        def hook(module, args, kwargs, output):
            # the first ATTENTION_SEQUENCES sequences of the batch: the entropy is an average
            # over rows, and recomputing every row would cost more than the step itself
            hidden = kwargs.get("hidden_states", args[0] if args else None)[:ATTENTION_SEQUENCES]
            cos, sin = kwargs["position_embeddings"]
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.size(0) > 1:
                mask = mask[:ATTENTION_SEQUENCES]
            with torch.no_grad():
                weights = attention_weights(module, hidden.detach(),
                                            (cos[:ATTENTION_SEQUENCES], sin[:ATTENTION_SEQUENCES]),
                                            mask)
            self.see(probe, "forward", weights)
        return hook

    @contextlib.contextmanager
    def recording(self, step: int) -> Iterator[None]:
        """Attach the probes for one training step (forward and backward), then write and detach."""
        self.step, self.records, self.raw, self._seen = step, [], {}, set()
        handles = [module.register_forward_hook(_output_hook(probe, field_name))
                   for module, probe, field_name in self.points]
        handles += [module.register_forward_hook(self._weights_hook(probe), with_kwargs=True)
                    for module, probe in self.weight_probes]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.step = None
        self._write(step)

    def _write(self, step: int) -> None:
        if self.folder is None:
            return
        with open(self.folder / PROBES_FILE, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)
        if self.raw:
            from safetensors.torch import save_file

            (self.folder / "probes").mkdir(exist_ok=True)
            save_file(self.raw, str(self.folder / "probes" / f"step_{step:08d}.safetensors"))

    def rewind(self, step: int) -> None:
        """Keep only the records of steps <= `step` (a resumed run repeats the later ones)."""
        path = None if self.folder is None else self.folder / PROBES_FILE
        if path is None or not path.is_file():
            return
        # a line cut short by the kill that made us resume is dropped
        kept = [r for r in read_jsonl(path)[0] if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
