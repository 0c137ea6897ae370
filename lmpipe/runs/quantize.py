"""The quantize stage: the distilled student as ternary (BitNet b1.58) and int8 models.

The absmean rule itself is `lmpipe.quant.ternary`. `quantize_run` produces the stage's models:
quantization-aware fine-tuning of the distilled student (lmpipe/quant/bitlinear.py) or post-training
quantization, both saved packed 2 bits per weight in transformers' BitNet layout
(lmpipe/model/export.py), and an int8 weight-only baseline (a compact int8 file beside its
dequantized float twin, which is what transformers loads: it has no int8 format of this kind).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from lmpipe.core.run_folder import RunLog
from lmpipe.model.build import load_model
from lmpipe.model.card import write_model_card
from lmpipe.model.export import export_int8, export_ternary
from lmpipe.params.config import Params
from lmpipe.runs.distillation import distill


def quantize_run(params: Params, source_dir: Path, out: Path, tokens_dir: Path,
                 tokenizer_dir: Path, cache_dir: Path, teacher_dir: Path) -> dict[str, Any]:
    """The quantize stage: the distilled student in `source_dir` as a packed ternary model in
    `out/model` (QAT fine-tuning or PTQ, `quantize.method`), plus for comparison its plain PTQ
    (`out/ptq`, with QAT) and an int8 weight-only baseline (`out/int8`). Writes
    `out/quantization.json` with each export's sizes."""
    q = params.quantize
    exports: dict[str, dict[str, Any]] = {}
    if q.method == "qat":
        tp = q.train.model_copy(update={"qat": True, "init_from": str(source_dir),
                                        "qat_skip_modules": q.skip_modules})
        summary = distill(params, tokens_dir, tokenizer_dir, cache_dir, teacher_dir, out,
                          train_params=tp, stage="quantize", name="quantized")
        exports["quantized"] = {"method": "bitnet-qat", "ratio": summary["packed_ratio"],
                                "file_bytes": summary["file_bytes"]}
    model, tokenizer = load_model(source_dir)
    resolved = {"run": {"stage": "quantize", "name": "quantized"}, **params.model_dump(mode="json")}
    with (RunLog(out, "quantize", "quantized", resolved) if q.method == "ptq"
          else contextlib.nullcontext()) as run:
        ptq_dir = out / ("model" if q.method == "ptq" else "ptq")
        stats = export_ternary(model, tokenizer, ptq_dir, q.skip_modules)
        exports["quantized" if q.method == "ptq" else "quantized_ptq"] = _brief(stats)
        write_model_card(ptq_dir, name="quantized" if q.method == "ptq" else "quantized_ptq",
                         stage="quantize", params=params.model_dump(mode="json"),
                         summary=_brief(stats), base_model=str(source_dir))
        if run is not None:
            run.finish(**_brief(stats))
    if q.int8_baseline:
        stats = export_int8(model, tokenizer, out / "int8", q.skip_modules)
        exports["int8"] = _brief(stats)
        write_model_card(out / "int8", name="int8", stage="quantize",
                         params=params.model_dump(mode="json"), summary=_brief(stats),
                         base_model=str(source_dir))
    (out / "quantization.json").write_text(json.dumps(
        {"method": q.method, "source": str(source_dir), "exports": exports}, indent=2) + "\n")
    for name, figures in exports.items():
        print(f"quantize: {name}: linear weights at {figures['ratio']:.4f} of fp32, "
              f"{figures['file_bytes']:,} bytes on disk")
    return exports


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k not in ("scales", "modules_to_not_convert")}
