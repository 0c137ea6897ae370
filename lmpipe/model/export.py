"""Export quantized models as real low-bit checkpoints, and load them back.

Two formats, each a normal model directory (config.json, model.safetensors, tokenizer, generation
config) that `AutoModelForCausalLM.from_pretrained` loads computing what lmpipe computes, or
refuses with an error; never one it runs silently wrong:

* **ternary** (`quant_method: "bitnet"`): every quantized linear weight is ternarized per tensor
  with absmean (`lmpipe.quant.ternary.ternarize`) and stored in transformers' BitNet layout: the
  codes + 1 in 2-bit fields, 4 values per uint8 along dim 0 (`<name>.weight`, shape
  `(ceil(out/4), in)`; value i of a packed row comes from rows `[i*row_dim, (i+1)*row_dim)`), with
  `<name>.weight_scale = [1/gamma]` (transformers' BitLinear divides its output by the scale).
  At 2 bits per weight plus one float32 per tensor this is ~1/16 of the float32 size.
  The config is what `transformers.BitNetQuantConfig` serializes (linear_class "bitlinear",
  quantization_mode "offline"), so `AutoModelForCausalLM.from_pretrained` reads it too (with
  accelerate installed). Its BitLinear holds out_features // 4 packed rows, so a layer whose
  out_features is not divisible by 4 (an untied, quantized lm_head over the 265-token byte
  vocabulary) makes it raise a size-mismatch error naming the layer; only lmpipe loads that.
* **int8** (weight-only per-output-channel absmax, a baseline): a format transformers does not
  know, so the directory holds it twice. `model.safetensors` has the weights dequantized to
  float32 (exactly `q * scale`) and config.json no `quantization_config`: transformers, lm-eval and
  the hub ecosystem load an ordinary float model computing what lmpipe computes.
  `lmpipe_int8.safetensors` is the compact form lmpipe loads and measures (`<name>.weight` int8,
  `<name>.weight_scale` float32 `[out, 1]`, the other tensors as saved), its quantization config
  (`quant_method: "lmpipe_int8"`) in the file's metadata.

`load_quantized` is lmpipe's loader for both (`lmpipe.model.build.load_model` dispatches to it). It
needs no torch.compile and no accelerate: ternary linears are unpacked once at load into
`TernaryLinear`, which computes exactly transformers' BitNet inference in float32 (per-token absmax
int8 activations, ternary weights, output divided by both scales); int8 weights are dequantized to
float32 at load into ordinary nn.Linear layers (the saving is on disk, not in memory or speed).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmpipe.model.build import save_tokenizer
from lmpipe.quant.float_linears import read_by_weight
from lmpipe.quant.packing import (
    BITNET,
    INT8,
    INT8_FILE,
    VALUES_PER_BYTE,
    WEIGHTS_FILE,
    converted_by_transformers,
    pack_ternary,
)
from lmpipe.quant.ternary import ternarize

# --- export --------------------------------------------------------------------------------------

def _select_linears(model: nn.Module, skip_modules: list[str]
                    ) -> tuple[list[tuple[str, nn.Linear]], list[str]]:
    """(linears to quantize, names of the linears left in float).

    Skipping matches as lmpipe.runs.quantize does (a skip string anywhere in the module name). A
    linear whose weight is shared with another module (lm_head tied to embed_tokens) is always
    skipped: quantizing it would quantize the embedding too or break the tie; so is one the
    architecture reads by weight (Mamba's dt_proj: lmpipe/quant/float_linears.py)."""
    owners: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        owners[id(param)] = owners.get(id(param), 0) + 1
    targets, skipped = [], []
    by_weight = read_by_weight(model)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if (any(s in name for s in skip_modules) or owners.get(id(module.weight), 0) > 1
                or name in by_weight):
            skipped.append(name)
        else:
            targets.append((name, module))
    if not targets:
        raise ValueError("quantize: the model has no nn.Linear layers outside "
                         f"quantize.skip_modules={list(skip_modules)} (tied embeddings are always "
                         "skipped); nothing to quantize")
    # Loaders read modules_to_not_convert with transformers' (prefix/suffix) rule, not lmpipe's
    # substring one; a layer written packed must not read as skipped.
    clash = [name for name, _ in targets if not converted_by_transformers(name, skipped)]
    if clash:
        raise ValueError(f"quantize: layer {clash[0]} would be quantized, but its name matches the "
                         f"skipped modules {skipped} as transformers reads modules_to_not_convert")
    return targets, skipped


def _float_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as saved: tied duplicates dropped (safetensors refuses shared
    tensors; transformers re-ties on load, as with save_pretrained), and of every linear layer only
    weight and bias. A subclass of nn.Linear (a QAT layer) may hold training state, such as a
    warm-up factor, that the plain architecture config.json describes has no place for."""
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    tensors = {}
    for key, tensor in model.state_dict().items():
        owner, _, field = key.rpartition(".")
        if owner in linears and field not in ("weight", "bias"):
            continue
        ident = (tensor.data_ptr(), tuple(tensor.shape))
        if ident in seen:
            continue
        seen.add(ident)
        tensors[key] = tensor.detach().contiguous().clone()
    return tensors


def _write_directory(model: nn.Module, tokenizer: Any, out_dir: Path,
                     tensors: dict[str, torch.Tensor],
                     quantization_config: dict[str, Any] | None) -> Path:
    """config.json (+ quantization_config unless None), model.safetensors, tokenizer, generation
    config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Stale shards, an old float checkpoint or an old compact int8 file beside the new file would
    # be read by loaders.
    stale = [*out_dir.glob("model*.safetensors"), *out_dir.glob("*.safetensors.index.json"),
             *out_dir.glob(INT8_FILE)]
    for old in stale:
        old.unlink()
    config = copy.deepcopy(model.config)
    if quantization_config is not None:
        config.quantization_config = quantization_config
    elif hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out_dir)
    weights = out_dir / WEIGHTS_FILE
    save_file(tensors, str(weights), metadata={"format": "pt"})
    if tokenizer is not None:
        # save_tokenizer: no transient padding state in the saved file
        save_tokenizer(tokenizer, out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    return weights


def _stats(method: str, layers: dict[str, float], quantized_weights: int, payload_bytes: int,
           scale_bytes: int, skipped: list[str], weights: Path, **extra: Any) -> dict[str, Any]:
    fp32_bytes = 4 * quantized_weights
    return {"method": method, "quantized_layers": len(layers),
            "quantized_weights": quantized_weights, "packed_bytes": payload_bytes,
            "scale_bytes": scale_bytes, "fp32_bytes": fp32_bytes,
            "ratio": (payload_bytes + scale_bytes) / fp32_bytes,
            "file_bytes": weights.stat().st_size, "modules_to_not_convert": skipped,
            "scales": layers, **extra}


def bitnet_quantization_config(modules_to_not_convert: list[str]) -> dict[str, Any]:
    """`quantization_config` exactly as transformers' BitNetQuantConfig serializes it."""
    return {"linear_class": "bitlinear", "modules_to_not_convert": list(modules_to_not_convert),
            "quant_method": BITNET, "quantization_mode": "offline", "rms_norm_eps": 1e-06,
            "use_rms_norm": False}


@torch.no_grad()
def export_ternary(model: nn.Module, tokenizer: Any, out_dir: str | Path,
                   skip_modules: list[str]) -> dict[str, Any]:
    """Save `model` with its linear weights ternarized and packed 2 bits each (BitNet layout).

    Returns stats: method, quantized_layers, quantized_weights, packed_bytes (uint8 codes),
    scale_bytes, fp32_bytes (of the same weights), ratio ((packed+scale)/fp32, ~1/16), file_bytes
    (model.safetensors), modules_to_not_convert, scales ({layer: gamma}) and transformers_loadable
    (False if some out_features is not divisible by 4, which transformers' BitLinear cannot hold;
    load_quantized can)."""
    targets, skipped = _select_linears(model, skip_modules)
    tensors = _float_tensors(model)
    scales: dict[str, float] = {}
    packed_bytes = 0
    for name, module in targets:
        codes, gamma = ternarize(module.weight.detach().to(torch.float32))
        packed = pack_ternary(codes)
        tensors[f"{name}.weight"] = packed
        # An all-zero matrix has gamma 0 and all-zero codes: any finite scale gives the same zero
        # output, and 1 avoids writing inf.
        tensors[f"{name}.weight_scale"] = (1 / gamma if gamma > 0 else torch.ones(())
                                           ).reshape(1).to(torch.float32)
        scales[name] = float(gamma)
        packed_bytes += packed.numel()
    weights = _write_directory(model, tokenizer, Path(out_dir), tensors,
                               bitnet_quantization_config(skipped))
    return _stats(BITNET, scales, sum(m.weight.numel() for _, m in targets), packed_bytes,
                  4 * len(targets), skipped, weights,
                  transformers_loadable=all(m.out_features % VALUES_PER_BYTE == 0
                                            for _, m in targets))


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel absmax int8: (q int8 [out, in], scale float32 [out, 1]), W ~ q * scale."""
    weight = weight.to(torch.float32)
    scale = weight.abs().amax(dim=1, keepdim=True) / 127
    # An all-zero row would divide by zero; any scale reproduces it, so use 1.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (weight / scale).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_quantization_config(modules_to_not_convert: list[str]) -> dict[str, Any]:
    """The int8 file's quantization config (stored in its safetensors metadata)."""
    return {"quant_method": INT8, "modules_to_not_convert": list(modules_to_not_convert)}


@torch.no_grad()
def export_int8(model: nn.Module, tokenizer: Any, out_dir: str | Path,
                skip_modules: list[str]) -> dict[str, Any]:
    """Save `model` with its linear weights in per-channel int8 (weight-only baseline): the compact
    `lmpipe_int8.safetensors`, and beside it `model.safetensors` with the same weights dequantized
    for transformers (module docstring).

    Returns the same stats as export_ternary (packed_bytes = int8 bytes, scales = {layer: mean
    channel scale}, file_bytes = the compact file), without transformers_loadable (transformers
    always loads the dequantized twin)."""
    targets, skipped = _select_linears(model, skip_modules)
    compact = _float_tensors(model)
    dequantized = dict(compact)
    scales: dict[str, float] = {}
    for name, module in targets:
        q, scale = int8_quantize(module.weight.detach())
        compact[f"{name}.weight"] = q
        compact[f"{name}.weight_scale"] = scale
        # the same product load_quantized computes, so both loaders hold bit-identical weights
        dequantized[f"{name}.weight"] = q.to(torch.float32) * scale
        scales[name] = float(scale.mean())
    out_dir = Path(out_dir)
    _write_directory(model, tokenizer, out_dir, dequantized, None)
    weights = out_dir / INT8_FILE
    save_file(compact, str(weights), metadata={
        "format": "pt", "quantization_config": json.dumps(int8_quantization_config(skipped))})
    n = sum(m.weight.numel() for _, m in targets)
    return _stats(INT8, scales, n, n, 4 * sum(m.out_features for _, m in targets), skipped,
                  weights)
