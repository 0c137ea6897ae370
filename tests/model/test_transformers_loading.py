"""Every model directory the default pipeline writes loads with plain transformers, in a process
that cannot import lmpipe, and computes the logits lmpipe's own loader computes; or transformers
refuses it with an error. Never silently wrong (the old int8 layout ran raw int8 codes as float
weights).

The directories are built by lmpipe's own code paths: `save_model` (teacher, student, distilled),
`export_ternary` on a model trained through BitLinear158 layers (QAT, as lmpipe.runs.training does),
and `quantize_run` with method ptq (packed ternary PTQ and the int8 baseline).

Tolerances: float and int8 directories hold the same float32 weights for both loaders, so their
logits agree to 1e-6; transformers' BitLinear and lmpipe's TernaryLinear run the same operations
in float32 (BitLinear through torch.compile), agreeing to 1e-4 as in test_ternary_export.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmpipe.model.build import build_model, load_model, save_model
from lmpipe.model.export import export_ternary
from lmpipe.model.params import ModelParams
from lmpipe.params.config import Params
from lmpipe.quant.bitlinear import convert_to_bitlinear, set_lambda
from lmpipe.quant.packing import INT8_FILE, TernaryLinear
from lmpipe.runs.quantize import quantize_run

# out_features all divisible by 4, as transformers' BitLinear needs (the default model's are)
STUDENT = ModelParams(d_model=32, n_layers=1, n_heads=4, max_seq_len=64)
TEACHER = ModelParams(d_model=48, n_layers=2, n_heads=4, max_seq_len=64, tie_embeddings=False)
IDS = [[1, 72, 101, 108, 108, 111, 32, 87, 111, 114, 108, 100],
       [1, 65, 100, 97, 32, 98, 111, 114, 110, 32, 105, 110]]

# Runs in a fresh interpreter: plain transformers, with lmpipe made unimportable so nothing lmpipe
# registers can take part. Writes each directory's logits, or the error transformers raised.
LOADER = r'''
import importlib.abc, json, sys

class NoLmpipe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lmpipe", "stages"):
            raise ImportError(f"{name} imported while loading with plain transformers")

sys.meta_path.insert(0, NoLmpipe())
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
dirs, ids, out = json.loads(sys.argv[1]), torch.tensor(json.loads(sys.argv[2])), sys.argv[3]
logits, info = {}, {}
for name, folder in dirs.items():
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    except Exception as exc:
        info[name] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    with torch.no_grad():
        logits[name] = model(ids).logits.contiguous()
    info[name] = {"up_proj": type(model.model.layers[0].mlp.up_proj).__name__,
                  "quantization_config": hasattr(model.config, "quantization_config")}
save_file(logits, out + ".safetensors")
json.dump({"info": info, "lmpipe_modules": [m for m in sys.modules if m.startswith("lmpipe")]},
          open(out + ".json", "w"))
'''


def plain_transformers(dirs: dict[str, Path], tmp: Path) -> tuple[dict, dict, str]:
    """(logits by name, info by name, stderr) of loading `dirs` with plain transformers."""
    out = tmp / "plain"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps({k: str(v) for k, v in dirs.items()}),
         json.dumps(IDS), str(out)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp / "plain.json").read_text())
    assert report["lmpipe_modules"] == []
    return load_file(tmp / "plain.safetensors"), report["info"], done.stderr


def lmpipe_logits(folder: Path) -> tuple[torch.Tensor, torch.nn.Module]:
    model, _ = load_model(folder)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits, model


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """One directory of every kind the default pipeline writes, plus a ternary one transformers
    cannot hold (an untied, quantized 265-row lm_head)."""
    root = tmp_path_factory.mktemp("dirs")
    dirs = {}
    for name, params, seed in (("teacher", TEACHER, 1), ("student", STUDENT, 2),
                               ("distilled", STUDENT, 3)):
        dirs[name] = save_model(build_model(params, seed=seed, tokenizer=tokenizer).eval(),
                                tokenizer, root / name / "model")

    # QAT: a few steps through BitLinear158 layers at full lambda, then the packed export runs.py
    # writes (so the latent weights are not the distilled ones)
    qat = build_model(STUDENT, seed=3, tokenizer=tokenizer)
    convert_to_bitlinear(qat, ["lm_head"])
    set_lambda(qat, 1.0)
    optimizer = torch.optim.AdamW(qat.parameters(), lr=1e-2)
    ids = torch.tensor(IDS)
    for _ in range(3):
        qat(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    export_ternary(qat.eval(), tokenizer, root / "quantize" / "model", ["lm_head"])
    dirs["quantized"] = root / "quantize" / "model"

    # the quantize stage itself (ptq needs no tokens, cache or teacher): PTQ ternary and int8
    unused = root / "unused"
    quantize_run(Params(quantize={"method": "ptq"}), dirs["distilled"], root / "ptq", unused,
                 unused, unused, unused)
    dirs["quantized_ptq"], dirs["int8"] = root / "ptq" / "model", root / "ptq" / "int8"

    untied = build_model(STUDENT.model_copy(update={"tie_embeddings": False}), seed=4,
                         tokenizer=tokenizer).eval()
    export_ternary(untied, tokenizer, root / "head" / "model", [])
    dirs["ternary_head"] = root / "head" / "model"
    return dirs


@pytest.fixture(scope="module")
def plain(pipeline_dirs, tmp_path_factory):
    pytest.importorskip("accelerate")  # transformers' BitNet quantizer requires it
    return plain_transformers(pipeline_dirs, tmp_path_factory.mktemp("plain"))


FLOAT = ["teacher", "student", "distilled"]


@pytest.mark.parametrize("name", [*FLOAT, "int8"])
def test_float_and_int8_directories_load_as_lmpipe_loads_them(plain, pipeline_dirs, name):
    logits, info, stderr = plain
    assert "error" not in info[name], info[name]
    assert info[name] == {"up_proj": "Linear", "quantization_config": False}
    ours, _ = lmpipe_logits(pipeline_dirs[name])
    assert logits[name].shape == (2, len(IDS[0]), 265)
    torch.testing.assert_close(logits[name], ours, atol=1e-6, rtol=1e-6)
    assert "Unknown quantization type" not in stderr


@pytest.mark.parametrize("name", ["quantized", "quantized_ptq"])
def test_packed_ternary_directories_load_with_transformers_bitnet(plain, pipeline_dirs, name):
    logits, info, _ = plain
    assert info[name] == {"up_proj": "BitLinear", "quantization_config": True}
    ours, model = lmpipe_logits(pipeline_dirs[name])
    assert isinstance(model.model.layers[0].mlp.up_proj, TernaryLinear)
    torch.testing.assert_close(logits[name], ours, atol=1e-4, rtol=1e-4)


def test_quantized_models_differ_from_their_source_by_quantization_only(plain):
    # int8 stays within 2% of the float model it came from (raw int8 codes as weights, the old
    # bug, are off by orders of magnitude); ternary PTQ of a random model moves much further
    logits, _, _ = plain
    source = logits["distilled"]

    def relative(name):
        return ((logits[name] - source).norm() / source.norm()).item()

    assert 0 < relative("int8") < 0.02
    assert relative("quantized_ptq") > 10 * relative("int8")


def test_int8_directory_is_float_for_transformers_and_int8_for_lmpipe(pipeline_dirs):
    folder = pipeline_dirs["int8"]
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    floats, compact = load_file(folder / "model.safetensors"), load_file(folder / INT8_FILE)
    assert {t.dtype for t in floats.values()} == {torch.float32}
    key = "model.layers.0.mlp.up_proj"
    q, scale = compact[f"{key}.weight"], compact[f"{key}.weight_scale"]
    assert q.dtype == torch.int8 and scale.shape == (4 * STUDENT.d_model, 1)
    assert torch.equal(floats[f"{key}.weight"], q.to(torch.float32) * scale)
    assert f"{key}.weight_scale" not in floats
    # the other tensors are the same in both files
    assert torch.equal(floats["model.embed_tokens.weight"], compact["model.embed_tokens.weight"])


def test_a_ternary_directory_transformers_cannot_hold_is_refused(plain, pipeline_dirs):
    _, info, _ = plain
    error = info["ternary_head"].get("error", "")
    assert error.startswith("RuntimeError") and "ignore_mismatched_sizes" in error
    model, _ = load_model(pipeline_dirs["ternary_head"])  # lmpipe's loader holds it
    assert isinstance(model.lm_head, TernaryLinear) and model.lm_head.out_features == 265


def test_the_old_int8_layout_is_refused_by_lmpipe(pipeline_dirs, tmp_path):
    # config.json with quant_method lmpipe_int8 and int8 codes in model.safetensors: what lmpipe
    # wrote before; it must not load as a float model
    import shutil

    old = tmp_path / "old"
    shutil.copytree(pipeline_dirs["int8"], old)
    (old / INT8_FILE).rename(old / "model.safetensors")
    config = json.loads((old / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "lmpipe_int8",
                                     "modules_to_not_convert": ["lm_head"]}
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="old int8 layout"):
        load_model(old)


def test_int8_sizes_measure_the_compact_file(pipeline_dirs):
    # eval.json's file_bytes/weight_bytes keep meaning the compact int8 form, not the float twin
    from lmpipe.eval.evaluate import size_records
    from lmpipe.model.build import tensor_headers

    folder = pipeline_dirs["int8"]
    sizes = {r["metric"]: r["value"] for r in size_records(folder)}
    assert sizes["file_bytes"] == (folder / INT8_FILE).stat().st_size
    headers = tensor_headers(folder / INT8_FILE)
    int8 = sum(t["shape"][0] * t["shape"][1] for t in headers.values() if t["dtype"] == "I8")
    floats = sum(4 * math.prod(t["shape"]) for t in headers.values() if t["dtype"] == "F32")
    assert int8 == 4 * 32 * 32 + 3 * 32 * 128
    assert sizes["weight_bytes"] == int8 + floats
    twin = sum(4 * math.prod(t["shape"])
               for t in tensor_headers(folder / "model.safetensors").values())
    scales = 4 * (4 * 32 + 2 * 128 + 32)  # one float32 per output channel
    assert sizes["weight_bytes"] == twin - 3 * int8 + scales
