"""Export quantized models as real low-bit checkpoints, and load them back.

Two formats, each a normal model directory (config.json, model.safetensors, tokenizer, generation
config) whose config.json carries a `quantization_config`:

* **ternary** (`quant_method: "bitnet"`): every quantized linear weight is ternarized per tensor
  with absmean (`lmpipe.quantize.ternarize`) and stored in transformers' BitNet layout: the codes
  + 1 in 2-bit fields, 4 values per uint8 along dim 0 (`<name>.weight`, shape
  `(ceil(out/4), in)`; value i of a packed row comes from rows `[i*row_dim, (i+1)*row_dim)`), with
  `<name>.weight_scale = [1/gamma]` (transformers' BitLinear divides its output by the scale).
  At 2 bits per weight plus one float32 per tensor this is ~1/16 of the float32 size.
  The config is what `transformers.BitNetQuantConfig` serializes (linear_class "bitlinear",
  quantization_mode "offline"), so `AutoModelForCausalLM.from_pretrained` reads it too (with
  accelerate installed; out_features must be divisible by 4 for its BitLinear).
* **int8** (`quant_method: "lmpipe_int8"`): weight-only per-output-channel absmax int8
  (`<name>.weight` int8, `<name>.weight_scale` float32 `[out, 1]`), a baseline. lmpipe's own format.

`load_quantized` is lmpipe's loader for both (`lmpipe.model.load_model` dispatches to it). It needs
no torch.compile and no accelerate: ternary linears are unpacked once at load into `TernaryLinear`,
which computes exactly transformers' BitNet inference in float32 (per-token absmax int8
activations, ternary weights, output divided by both scales); int8 weights are dequantized to
float32 at load into ordinary nn.Linear layers (the saving is on disk, not in memory or speed).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lmpipe.quantize import ternarize

BITNET = "bitnet"
INT8 = "lmpipe_int8"
WEIGHTS_FILE = "model.safetensors"
VALUES_PER_BYTE = 4  # 2-bit fields in a uint8


# --- packing -------------------------------------------------------------------------------------

def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes (any dtype, values in {-1, 0, 1}) into uint8, 4 per byte along dim 0.

    Byte layout is transformers' `integrations.bitnet.pack_weights`: with `row_dim = ceil(n/4)`,
    packed row r holds rows r, r+row_dim, r+2*row_dim, r+3*row_dim in bits 0-1, 2-3, 4-5, 6-7, each
    stored as code + 1. Rows past the end (n not divisible by 4) are zero bits, as there.
    The input is not modified (transformers' version adds 1 to it in place)."""
    if codes.dim() < 1 or codes.shape[0] == 0:
        raise ValueError(f"pack_ternary: need a tensor with at least one row, got shape "
                         f"{tuple(codes.shape)}")
    if not ((codes == -1) | (codes == 0) | (codes == 1)).all():
        raise ValueError("pack_ternary: codes must all be -1, 0 or 1")
    rows = codes.shape[0]
    row_dim = math.ceil(rows / VALUES_PER_BYTE)
    fields = (codes.to(torch.int16) + 1).to(torch.uint8)
    padding = torch.zeros((VALUES_PER_BYTE * row_dim - rows, *codes.shape[1:]), dtype=torch.uint8,
                          device=codes.device)
    fields = torch.cat([fields, padding]).reshape(VALUES_PER_BYTE, row_dim, *codes.shape[1:])
    packed = fields[0].clone()
    for i in range(1, VALUES_PER_BYTE):
        packed |= fields[i] << (2 * i)
    return packed


def unpack_ternary(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """The int8 codes (`rows` rows) that `pack_ternary` packed into `packed` (uint8).

    transformers' unpack returns all 4*row_dim rows; `rows` drops the zero padding."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_ternary: packed weights must be uint8, got {packed.dtype}")
    if packed.dim() < 1 or math.ceil(rows / VALUES_PER_BYTE) != packed.shape[0] or rows < 1:
        raise ValueError(f"unpack_ternary: {rows} rows pack into {math.ceil(rows / 4)} rows, but "
                         f"the packed tensor has shape {tuple(packed.shape)}")
    fields = torch.stack([(packed >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)])
    codes = fields.reshape(VALUES_PER_BYTE * packed.shape[0], *packed.shape[1:])[:rows]
    return codes.to(torch.int8) - 1


def packed_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Shape of the packed uint8 tensor of an `out_features x in_features` ternary weight."""
    return math.ceil(out_features / VALUES_PER_BYTE), in_features


# --- inference module ----------------------------------------------------------------------------

class TernaryLinear(nn.Module):
    """A ternary linear layer computing transformers' BitNet `BitLinear` forward in float32.

    `weight` holds the unpacked codes {-1, 0, 1} as a frozen float32 parameter of the logical shape
    (out, in), so parameter counts and `.weight.shape` read as for the nn.Linear it replaces; its
    state_dict is therefore not the packed format (re-export from the float model instead)."""

    def __init__(self, codes: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.weight = nn.Parameter(codes.to(torch.float32), requires_grad=False)
        self.register_buffer("weight_scale", weight_scale.to(torch.float32).reshape(1))
        self.bias = (nn.Parameter(bias.to(torch.float32), requires_grad=False)
                     if bias is not None else None)

    @classmethod
    def from_packed(cls, packed: torch.Tensor, weight_scale: torch.Tensor, out_features: int,
                    bias: torch.Tensor | None = None) -> TernaryLinear:
        return cls(unpack_ternary(packed, out_features), weight_scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same operations, in the same order, as BitLinear.activation_quant/post_quant_process
        # so results match transformers' to float rounding.
        x = x.to(torch.float32)
        input_scale = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        x_quant = (x * input_scale).round().clamp(-128, 127)
        y = F.linear(x_quant, self.weight) / (self.weight_scale * input_scale)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


# --- export --------------------------------------------------------------------------------------

def _select_linears(model: nn.Module, skip_modules: list[str]
                    ) -> tuple[list[tuple[str, nn.Linear]], list[str]]:
    """(linears to quantize, names of the linears left in float).

    Skipping matches as lmpipe.quantize does (a skip string anywhere in the module name). A linear
    whose weight is shared with another module (lm_head tied to embed_tokens) is always skipped:
    quantizing it would quantize the embedding too or break the tie."""
    owners: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        owners[id(param)] = owners.get(id(param), 0) + 1
    targets, skipped = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if any(s in name for s in skip_modules) or owners.get(id(module.weight), 0) > 1:
            skipped.append(name)
        else:
            targets.append((name, module))
    if not targets:
        raise ValueError("quantize: the model has no nn.Linear layers outside "
                         f"quantize.skip_modules={list(skip_modules)} (tied embeddings are always "
                         "skipped); nothing to quantize")
    # Loaders read modules_to_not_convert with transformers' (prefix/suffix) rule, not lmpipe's
    # substring one; a layer written packed must not read as skipped.
    clash = [name for name, _ in targets if not _converted(name, skipped)]
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
                     tensors: dict[str, torch.Tensor], quantization_config: dict[str, Any]) -> Path:
    """config.json (+ quantization_config), model.safetensors, tokenizer, generation config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Stale shards or an old float checkpoint beside the new file would be read by loaders.
    stale = [*out_dir.glob("model*.safetensors"), *out_dir.glob("*.safetensors.index.json")]
    for old in stale:
        old.unlink()
    config = copy.deepcopy(model.config)
    config.quantization_config = quantization_config
    config.save_pretrained(out_dir)
    weights = out_dir / WEIGHTS_FILE
    save_file(tensors, str(weights), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
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


@torch.no_grad()
def export_int8(model: nn.Module, tokenizer: Any, out_dir: str | Path,
                skip_modules: list[str]) -> dict[str, Any]:
    """Save `model` with its linear weights in per-channel int8 (weight-only baseline).

    Returns the same stats as export_ternary (packed_bytes = int8 bytes, scales = {layer: mean
    channel scale}), without transformers_loadable (transformers does not know this format)."""
    targets, skipped = _select_linears(model, skip_modules)
    tensors = _float_tensors(model)
    scales: dict[str, float] = {}
    for name, module in targets:
        q, scale = int8_quantize(module.weight.detach())
        tensors[f"{name}.weight"] = q
        tensors[f"{name}.weight_scale"] = scale
        scales[name] = float(scale.mean())
    weights = _write_directory(model, tokenizer, Path(out_dir), tensors,
                               {"quant_method": INT8, "modules_to_not_convert": skipped})
    n = sum(m.weight.numel() for _, m in targets)
    return _stats(INT8, scales, n, n, 4 * sum(m.out_features for _, m in targets), skipped,
                  weights)


# --- loading -------------------------------------------------------------------------------------

def quantization_config_of(model_dir: str | Path) -> dict[str, Any] | None:
    """The directory's `quantization_config` if it is one load_quantized reads, else None."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    qc = json.loads(path.read_text()).get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") in (BITNET, INT8):
        return qc
    return None


def _converted(name: str, patterns: list[str]) -> bool:
    """transformers' should_convert_module rule for modules_to_not_convert, so both loaders pick
    the same layers: a pattern skips a module when it matches (as a regex) from the start up to a
    module boundary, or is a suffix of its name."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return not any(re.match(rf"(?:{p}){boundary}", name) or name.endswith(p) for p in patterns)


def _check_bitnet_config(qc: dict[str, Any], config_path: Path) -> None:
    """Only the variant export_ternary writes: autobitlinear/online store float weights, and
    use_rms_norm adds a norm TernaryLinear does not have."""
    supported = {"linear_class": "bitlinear", "quantization_mode": "offline", "use_rms_norm": False}
    wrong = {k: qc.get(k, v) for k, v in supported.items() if qc.get(k, v) != v}
    if wrong:
        raise ValueError(f"{config_path}: quantization_config {wrong} is not supported; lmpipe "
                         "loads linear_class 'bitlinear', quantization_mode 'offline', "
                         "use_rms_norm false (the layout export_ternary writes)")


def _quantized_layer(method: str, name: str, linear: nn.Linear, tensors: dict[str, torch.Tensor],
                     weights: Path) -> nn.Module:
    """The loaded replacement for one quantized linear, after checking its tensors against the
    shapes the config implies."""
    out_f, in_f = linear.out_features, linear.in_features
    key, scale_key = f"{name}.weight", f"{name}.weight_scale"
    for k in (key, scale_key):
        if k not in tensors:
            raise ValueError(f"{weights}: missing tensor {k} of quantized layer {name} (the "
                             "config's modules_to_not_convert does not skip it)")
    weight, scale = tensors.pop(key), tensors.pop(scale_key)
    bias = tensors.pop(f"{name}.bias", None)
    if method == BITNET:
        want, dtype, want_scale, what = packed_shape(out_f, in_f), torch.uint8, (1,), "packed"
    else:
        want, dtype, want_scale, what = (out_f, in_f), torch.int8, (out_f, 1), "int8"
    if tuple(weight.shape) != want:
        raise ValueError(f"{weights}: {key}: {what} shape {tuple(weight.shape)}, the config "
                         f"implies {want} for {out_f} x {in_f} weights")
    if weight.dtype != dtype:
        raise ValueError(f"{weights}: {key}: dtype {weight.dtype}, expected {dtype}")
    if tuple(scale.shape) != want_scale:
        raise ValueError(f"{weights}: {scale_key}: shape {tuple(scale.shape)}, expected "
                         f"{want_scale}")
    if bias is not None and tuple(bias.shape) != (out_f,):
        raise ValueError(f"{weights}: {name}.bias: shape {tuple(bias.shape)}, expected ({out_f},)")
    if method == BITNET:
        return TernaryLinear.from_packed(weight, scale, out_f, bias)
    # int8 baseline: dequantized once, then an ordinary float32 linear layer.
    layer = nn.Linear(in_f, out_f, bias=bias is not None)
    layer.weight.copy_(weight.to(torch.float32) * scale.to(torch.float32))
    if bias is not None:
        layer.bias.copy_(bias)
    return layer


@torch.no_grad()
def load_quantized(model_dir: str | Path) -> tuple[nn.Module, Any]:
    """Load a directory written by export_ternary or export_int8: (model in eval mode, tokenizer).

    The model is built from config.json without its quantization_config, the quantized linears
    are replaced (TernaryLinear, or nn.Linear with dequantized int8 weights), and every other
    tensor is loaded as saved. Tensor shapes are checked against the config first."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from lmpipe.tokenizer import load_tokenizer

    folder = Path(model_dir)
    config_path, weights = folder / "config.json", folder / WEIGHTS_FILE
    qc = quantization_config_of(folder)
    if qc is None:
        raise ValueError(f"{config_path}: no quantization_config with quant_method '{BITNET}' or "
                         f"'{INT8}'")
    method = qc["quant_method"]
    if method == BITNET:
        _check_bitnet_config(qc, config_path)
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_FILE}")
    config = AutoConfig.from_pretrained(str(folder))
    # Without the quantization_config the model is a plain float one; lmpipe swaps the layers.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    skip = list(qc.get("modules_to_not_convert") or [])
    quantized = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and _converted(n, skip)]
    for name, linear in quantized:
        model.set_submodule(name, _quantized_layer(method, name, linear, tensors, weights))
    stray = sorted(k for k in tensors if k.endswith(".weight_scale"))
    if stray:
        raise ValueError(f"{weights}: {stray[0]} belongs to a layer the config does not quantize "
                         "(listed in modules_to_not_convert, or not an nn.Linear)")
    _load_float_tensors(model, tensors, {n for n, _ in quantized}, weights)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.eval()
    return model, load_tokenizer(folder)


def _load_float_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], quantized: set[str],
                        weights: Path) -> None:
    """Load the non-quantized tensors; every model tensor must be set, except the quantized layers'
    (already set) and tied duplicates (set through the tensor they share)."""
    expected = model.state_dict()
    for key, tensor in tensors.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{weights}: {key}: shape {tuple(tensor.shape)}, the config implies "
                             f"{tuple(expected[key].shape)}")
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{weights}: tensors the model does not have: {result.unexpected_keys}")
    loaded = {expected[k].data_ptr() for k in tensors}
    missing = [k for k in result.missing_keys
               if k.rsplit(".", 1)[0] not in quantized and expected[k].data_ptr() not in loaded]
    if missing:
        raise ValueError(f"{weights}: missing tensors {missing}")
