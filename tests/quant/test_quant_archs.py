"""BitNet b1.58 on mamba, mamba2 and hawk: which linears are ternary (convolutions, norms,
embeddings, Mamba's dt_proj stay float; Mamba-2's in_proj and out_proj are ternary), QAT
through the training loop, packed export -> load giving the in-memory ternary model's logits,
and the int8 baseline."""

import copy
import json

import pytest
import torch

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model, load_model, save_model
from lmpipe.model.export import export_int8, export_ternary
from lmpipe.model.params import ModelParams
from lmpipe.quant.bitlinear import BitLinear158, convert_to_bitlinear, set_lambda
from lmpipe.quant.packing import TernaryLinear
from lmpipe.train.loop import train
from lmpipe.train.params import TrainParams

# per arch, the linears of one block that are quantized (Mamba's dt_proj is read by weight)
QUANTIZED = {"mamba": {"mixer.in_proj", "mixer.x_proj", "mixer.out_proj"},
             "mamba2": {"mixer.in_proj", "mixer.out_proj"},
             "hawk": {"temporal_block.linear_x", "temporal_block.linear_y",
                      "temporal_block.linear_out", "mlp_block.gate_proj", "mlp_block.up_proj",
                      "mlp_block.down_proj"}}
IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


def tiny(arch: str) -> torch.nn.Module:
    return build_model(ModelParams(arch=arch, d_model=32, n_layers=2, d_state=4), seed=0).eval()


def in_block(names, arch: str) -> set[str]:
    """The names of block 0's modules among `names`, relative to the block."""
    prefix = {"mamba": "backbone.layers.0.", "mamba2": "backbone.layers.0.",
              "hawk": "model.layers.0."}[arch]
    return {n[len(prefix):] for n in names if n.startswith(prefix)}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_packed_export_loads_to_the_in_memory_ternary_model(arch, tokenizer, tmp_path):
    model = tiny(arch)
    ternary = copy.deepcopy(model)
    converted = convert_to_bitlinear(ternary, ["lm_head"])  # lam = 1: BitNet's forward
    assert in_block(converted, arch) == QUANTIZED[arch]
    stats = export_ternary(model, tokenizer, tmp_path / "packed", ["lm_head"])
    loaded, _ = load_model(tmp_path / "packed")
    ternary_names = {n for n, m in loaded.named_modules() if isinstance(m, TernaryLinear)}
    assert ternary_names == set(converted) and stats["quantized_layers"] == len(converted)
    if arch == "mamba":  # read by weight: float, and listed for transformers' loader too
        assert type(loaded.backbone.layers[0].mixer.dt_proj) is torch.nn.Linear
        assert "backbone.layers.0.mixer.dt_proj" in stats["modules_to_not_convert"]
        torch.testing.assert_close(loaded.backbone.layers[0].mixer.dt_proj.weight,
                                   model.backbone.layers[0].mixer.dt_proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(logits(loaded), logits(ternary), rtol=1e-5, atol=1e-5)
    assert (logits(loaded) - logits(model)).abs().max() > 1e-3  # it is not the float model
    save_model(model, tokenizer, tmp_path / "float")
    assert stats["file_bytes"] < (tmp_path / "float" / "model.safetensors").stat().st_size


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_skip_modules_keep_layers_float(arch, tokenizer, tmp_path):
    skip = {"mamba": "out_proj", "mamba2": "out_proj", "hawk": "mlp_block"}[arch]
    stats = export_ternary(tiny(arch), tokenizer, tmp_path, ["lm_head", skip])
    loaded, _ = load_model(tmp_path)
    names = {n for n, m in loaded.named_modules() if isinstance(m, TernaryLinear)}
    assert in_block(names, arch) == {n for n in QUANTIZED[arch] if skip not in n}
    assert stats["quantized_layers"] == len(names)


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_qat_trains_the_model_it_exports(arch, tiny_tokens, tokenizer, tmp_path):
    model = tiny(arch).train()
    tp = TrainParams(steps=12, batch_size=8, lr=3e-3, warmup_steps=2, log_every=4,
                     eval_every=12, qat=True, qat_warmup_steps=4)
    with RunLog(tmp_path / "run", "train", "qat", {}) as run:
        summary = train(model, TokenSplit.open(tiny_tokens, "train"),
                        TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    assert [r["qat_lambda"] for r in records if "qat_lambda" in r][-1] == 1.0
    bit = {n for n, m in model.named_modules() if isinstance(m, BitLinear158)}
    assert in_block(bit, arch) == QUANTIZED[arch]
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    model.eval()
    set_lambda(model, 1.0)
    export_ternary(model, tokenizer, tmp_path / "packed", tp.qat_skip_modules)
    loaded, _ = load_model(tmp_path / "packed")
    assert_same_ternary_forward(loaded, model)


def assert_same_ternary_forward(loaded: torch.nn.Module, model: torch.nn.Module) -> None:
    """`loaded`'s TernaryLinear layers compute what `model`'s BitLinear158 layers do on the same
    inputs, and the logits agree. The two forms differ by float rounding (dequantized products
    against integer codes then a division), and a difference of ~1e-6 in front of a later layer
    can move one activation across a rounding boundary of its 8-bit code: one step (1/127 of
    its token's absmax) that changes that token's logits by ~1e-3 and no other token's (seen
    once at one of 24 positions, Mamba-2's second out_proj after 12 QAT steps). So every layer
    to 1e-5 on the same input, and the logits to 1e-5 at all but one position."""
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [module.register_forward_hook(
        lambda m, args, out, name=name: inputs.__setitem__(name, (args[0], out)))
        for name, module in model.named_modules() if isinstance(module, BitLinear158)]
    qat = logits(model)
    for hook in hooks:
        hook.remove()
    ternary = dict(loaded.named_modules())
    assert inputs and all(isinstance(ternary[name], TernaryLinear) for name in inputs)
    with torch.no_grad():
        for name, (x, out) in inputs.items():
            torch.testing.assert_close(ternary[name](x), out, rtol=1e-5, atol=1e-5)
    per_position = (logits(loaded) - qat).abs().amax(-1)
    assert (per_position > 1e-5).sum() <= 1 and per_position.max() < 1e-2, per_position


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_int8_baseline_is_close_to_the_float_model(arch, tokenizer, tmp_path):
    model = tiny(arch)
    stats = export_int8(model, tokenizer, tmp_path, ["lm_head"])
    assert stats["method"] == "lmpipe_int8"
    loaded, _ = load_model(tmp_path)
    reference = logits(model)
    relative = ((logits(loaded) - reference).norm() / reference.norm()).item()
    assert 0 < relative < 0.02


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_the_eval_stage_scores_a_packed_recurrent_model(arch, tiny_world, tiny_tokens, tokenizer,
                                                        tmp_path):
    """Generation through each model's own cache runs on the loaded TernaryLinear layers."""
    from lmpipe.data.tooldb import PeopleDB, sample_people
    from lmpipe.eval.evaluate import evaluate_model, headline
    from lmpipe.eval.params import EvalParams

    export_ternary(tiny(arch), tokenizer, tmp_path / "packed", ["lm_head"])
    with PeopleDB(tiny_world / "people.duckdb") as db:
        records, transcripts = evaluate_model(
            tmp_path / "packed", db, TokenSplit.open(tiny_tokens, "val"),
            EvalParams(batch_size=8, max_new_tokens=4), sample_people(db, "train", 2, 0), [],
            TrainParams(), knowledge=True)
    table = headline(records)
    assert table["val_loss"] > 0 and sum(len(t) for t in transcripts.values()) == 2 * 2 * 6
