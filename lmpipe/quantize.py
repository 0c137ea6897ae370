"""Ternary (BitNet b1.58, absmean) post-training quantization of a model's linear layers.

For each weight matrix W: gamma = mean|W|, W_q = clip(round(W / (gamma + eps)), -1, 1), and the
layer computes with W_q * gamma. The saved model keeps these dequantized values in float32 so it
loads as an ordinary transformers model; every quantized matrix holds at most three distinct values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmpipe.config import Params

EPS = 1e-5


def ternarize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ternary codes in {-1, 0, 1}, scale gamma) for one weight matrix."""
    gamma = weight.abs().mean()
    codes = (weight / (gamma + EPS)).round().clamp(-1, 1)
    return codes, gamma


@torch.no_grad()
def quantize_ternary_(model: torch.nn.Module, skip: list[str]) -> dict[str, float]:
    """Replace every nn.Linear weight (names not matching `skip`) with its ternary approximation."""
    scales: dict[str, float] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or any(s in name for s in skip):
            continue
        codes, gamma = ternarize(module.weight)
        module.weight.copy_(codes * gamma)
        scales[name] = float(gamma)
    if not scales:
        raise ValueError("quantize: the model has no nn.Linear layers outside "
                         f"quantize.skip_modules={skip}; nothing to quantize")
    return scales


def quantize_run(source_dir: Path, out: Path, params: Params) -> dict[str, float]:
    """Quantize the model in `source_dir` into the run folder `out` (model in `out/model`)."""
    from lmpipe.model import count_parameters, load_model, save_model
    from lmpipe.model_card import write_model_card
    from lmpipe.runlog import RunLog

    model, tokenizer = load_model(source_dir)
    resolved = {"run": {"stage": "quantize", "name": "quantized"}, **params.model_dump(mode="json")}
    with RunLog(out, "quantize", "quantized", resolved) as run:
        scales = quantize_ternary_(model, params.quantize.skip_modules)
        save_model(model, tokenizer, out / "model")
        quantized_weights = sum(dict(model.named_modules())[name].weight.numel() for name in scales)
        (out / "quantization.json").write_text(json.dumps(
            {"method": params.quantize.method, "bits_per_weight": 1.58, "source": str(source_dir),
             "scales": scales}, indent=2) + "\n")
        summary = {"quantized_layers": len(scales), "quantized_weights": quantized_weights,
                   "params_count": count_parameters(model)}
        write_model_card(out / "model", name="quantized", stage="quantize",
                         params=params.model_dump(mode="json"), summary=summary,
                         base_model=str(source_dir))
        run.finish(**summary)
    print(f"quantize: {len(scales)} linear layers ({quantized_weights:,} weights) -> ternary")
    return summary
