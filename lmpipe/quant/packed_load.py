"""Load lmpipe's quantized model directories (packed ternary BitNet, int8 weight-only) for
inference, checking every tensor against the config; `lmpipe.model.build.load_model` dispatches here
when a directory's config.json carries a BitNet `quantization_config` or the directory holds a
compact int8 file (whose metadata carries its config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from lmpipe.data.tokenizer import load_tokenizer
from lmpipe.quant.packing import (
    BITNET,
    INT8,
    INT8_FILE,
    WEIGHTS_FILE,
    TernaryLinear,
    converted_by_transformers,
    packed_shape,
)

# --- loading -------------------------------------------------------------------------------------

def quantization_config_of(model_dir: str | Path) -> dict[str, Any] | None:
    """The directory's quantization config if load_quantized reads it, else None: config.json's
    BitNet `quantization_config`, or the metadata of the compact int8 file (config.json of an int8
    directory describes the dequantized float twin transformers loads)."""
    folder = Path(model_dir)
    path = folder / "config.json"
    if not path.is_file():
        return None
    if (folder / INT8_FILE).is_file():
        with safe_open(str(folder / INT8_FILE), framework="pt") as f:
            qc = json.loads((f.metadata() or {}).get("quantization_config", "null"))
        if not (isinstance(qc, dict) and qc.get("quant_method") == INT8):
            raise ValueError(f"{folder / INT8_FILE}: no quantization_config with quant_method "
                             f"'{INT8}' in its metadata")
        return qc
    qc = json.loads(path.read_text()).get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == INT8:
        # lmpipe before the int8 file: int8 codes in model.safetensors, which transformers skips
        # the unknown quant_method of and runs as float weights
        raise ValueError(f"{path}: quant_method '{INT8}' in config.json is the old int8 layout "
                         "(codes in model.safetensors), which transformers misreads; export it "
                         "again (dvc repro quantize)")
    if isinstance(qc, dict) and qc.get("quant_method") == BITNET:
        return qc
    return None


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
    """Load a directory written by export_ternary or export_int8 (its compact int8 file, not the
    dequantized twin): (model in eval mode, tokenizer).

    The model is built from config.json without its quantization_config, the quantized linears
    are replaced (TernaryLinear, or nn.Linear with dequantized int8 weights), and every other
    tensor is loaded as saved. Tensor shapes are checked against the config first."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = Path(model_dir)
    config_path = folder / "config.json"
    qc = quantization_config_of(folder)
    if qc is None:
        raise ValueError(f"{folder}: neither a quantization_config with quant_method '{BITNET}' "
                         f"in config.json nor an int8 file {INT8_FILE}")
    method = qc["quant_method"]
    weights = folder / (INT8_FILE if method == INT8 else WEIGHTS_FILE)
    if method == BITNET:
        _check_bitnet_config(qc, config_path)
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {weights.name}")
    config = AutoConfig.from_pretrained(str(folder))
    # Without the quantization_config the model is a plain float one; lmpipe swaps the layers.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    skip = list(qc.get("modules_to_not_convert") or [])
    quantized = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and converted_by_transformers(n, skip)]
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
