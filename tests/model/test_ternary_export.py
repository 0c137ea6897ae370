"""Packed ternary (BitNet layout) and int8 export: packing, size, loading, and bad input."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmpipe.model.build import build_model, count_parameters, load_model
from lmpipe.model.export import export_int8, export_ternary
from lmpipe.model.params import ModelParams
from lmpipe.quant.packed_load import load_quantized
from lmpipe.quant.packing import INT8_FILE, TernaryLinear, pack_ternary, unpack_ternary
from lmpipe.quant.ternary import ternarize

SHAPES = [(4, 3), (5, 3), (6, 2), (9, 4), (13, 7), (1, 5), (2, 3), (64, 16), (7,), (8, 3, 2)]
MID_MODEL = ModelParams(d_model=64, n_layers=1, n_heads=4, max_seq_len=64)


def random_codes(shape, seed=0):
    return torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def mid_model():
    return build_model(MID_MODEL, seed=0).eval()


@pytest.fixture()
def ids():
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack_round_trip_is_bit_exact(shape):
    # out_features not divisible by 4 packs too (zero bits pad the last fields, as transformers'
    # pack_weights does); unpack needs the row count to drop the padding
    for dtype in (torch.int8, torch.float32):
        codes = random_codes(shape).to(dtype)
        before = codes.clone()
        packed = pack_ternary(codes)
        assert packed.dtype == torch.uint8
        assert packed.shape == ((shape[0] + 3) // 4, *shape[1:])
        assert torch.equal(codes, before)  # the input is not modified
        unpacked = unpack_ternary(packed, shape[0])
        assert unpacked.dtype == torch.int8
        assert torch.equal(unpacked, before.to(torch.int8))


@pytest.mark.parametrize("shape", SHAPES)
def test_packed_bytes_are_transformers_layout(shape):
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    codes = random_codes(shape, seed=2).to(torch.float32)
    packed = pack_ternary(codes)
    assert torch.equal(packed, pack_weights(codes.clone()))  # theirs adds 1 in place
    # transformers' unpack is wrapped in torch.compile (seconds per shape on CPU); its original
    # function is the same code. test_transformers_loader_matches runs the compiled one.
    theirs = unpack_weights._torchdynamo_orig_callable(packed, dtype=torch.float32)
    assert torch.equal(theirs[:shape[0]], codes)  # theirs keeps all 4*row_dim rows


def test_pack_rejects_non_ternary_and_unpack_checks_rows():
    with pytest.raises(ValueError, match="-1, 0 or 1"):
        pack_ternary(torch.tensor([[2.0, 0.0]]))
    with pytest.raises(ValueError, match="5 rows pack into 2 rows"):
        unpack_ternary(pack_ternary(random_codes((12, 3))), 5)
    with pytest.raises(ValueError, match="uint8"):
        unpack_ternary(torch.zeros(2, 3, dtype=torch.int8), 8)


def fake_quant_reference(model, ids, quantized: set[str]):
    """Logits of `model` with transformers' BitNet inference emulated directly: the quantized
    linears use ternarized weights (codes * gamma) and per-token absmax int8 activations."""
    hooks = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if name in quantized:
                codes, gamma = ternarize(module.weight)
                module.weight.copy_(codes * gamma)

                def act_quant(_, args):
                    x = args[0]
                    scale = 127 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
                    return ((x * scale).round().clamp(-128, 127) / scale,)
                hooks.append(module.register_forward_pre_hook(act_quant))
        logits = model(ids).logits
    for h in hooks:
        h.remove()
    return logits


def test_export_is_a_sixteenth_of_fp32_and_in_bitnet_config(mid_model, tokenizer, tmp_path):
    from transformers import BitNetQuantConfig

    stats = export_ternary(mid_model, tokenizer, tmp_path, skip_modules=["lm_head"])
    assert stats["quantized_layers"] == 7
    assert stats["quantized_weights"] == 4 * 64 * 64 + 3 * 64 * 256
    assert stats["packed_bytes"] == stats["quantized_weights"] // 4  # 2 bits a weight
    assert stats["scale_bytes"] == 7 * 4  # one float32 per tensor
    assert stats["fp32_bytes"] == 4 * stats["quantized_weights"]
    assert stats["packed_bytes"] * 15 <= stats["fp32_bytes"]  # the requirement
    assert stats["ratio"] == (stats["packed_bytes"] + stats["scale_bytes"]) / stats["fp32_bytes"]
    assert 1 / 16 < stats["ratio"] < 1.002 / 16  # 0.06261: the scales add 28 bytes
    assert stats["file_bytes"] == (tmp_path / "model.safetensors").stat().st_size
    assert stats["transformers_loadable"] is True

    config = json.loads((tmp_path / "config.json").read_text())
    expected = json.loads(BitNetQuantConfig(modules_to_not_convert=["lm_head"]).to_json_string())
    assert config["quantization_config"] == expected
    for name in ("tokenizer.json", "generation_config.json"):
        assert (tmp_path / name).is_file()
    tensors = load_file(tmp_path / "model.safetensors")
    up = tensors["model.layers.0.mlp.up_proj.weight"]
    assert up.dtype == torch.uint8 and up.shape == (64, 64)  # 256 x 64 weights
    _, gamma = ternarize(mid_model.model.layers[0].mlp.up_proj.weight)
    scale = tensors["model.layers.0.mlp.up_proj.weight_scale"]
    assert scale.shape == (1,) and scale.item() == pytest.approx(1 / gamma.item())
    # the tied lm_head is saved once, as the float embedding (transformers re-ties it)
    assert "lm_head.weight" not in tensors
    assert tensors["model.embed_tokens.weight"].dtype == torch.float32


def test_load_quantized_reproduces_the_fake_quant_forward(mid_model, tokenizer, tmp_path, ids):
    export_ternary(mid_model, tokenizer, tmp_path, skip_modules=["lm_head"])
    model, tok = load_model(tmp_path)  # dispatches to load_quantized
    assert tok.get_vocab() == tokenizer.get_vocab()
    layers = {n for n, m in model.named_modules() if isinstance(m, TernaryLinear)}
    assert len(layers) == 7 and "lm_head" not in layers
    assert count_parameters(model) == count_parameters(mid_model)
    assert model.generation_config.eos_token_id == mid_model.generation_config.eos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    reference = fake_quant_reference(mid_model, ids, layers)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


def test_tied_lm_head_stays_float_and_tied(tiny_model, tokenizer, tmp_path, ids):
    embedding = tiny_model.model.embed_tokens.weight.detach().clone()
    stats = export_ternary(tiny_model, tokenizer, tmp_path, skip_modules=[])  # lm_head not skipped
    assert stats["modules_to_not_convert"] == ["lm_head"]
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    model, _ = load_quantized(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, embedding)


def test_untied_head_with_out_features_not_divisible_by_4(tokenizer, tmp_path, ids):
    # the byte vocabulary (265) is not a multiple of 4: lmpipe's loader handles the padded packing;
    # transformers' BitLinear allocates out_features // 4 rows and cannot
    model = build_model(MID_MODEL.model_copy(update={"tie_embeddings": False}), seed=0).eval()
    stats = export_ternary(model, tokenizer, tmp_path, skip_modules=[])
    assert stats["quantized_layers"] == 8 and stats["transformers_loadable"] is False
    assert load_file(tmp_path / "model.safetensors")["lm_head.weight"].shape == (67, 64)
    loaded, _ = load_quantized(tmp_path)
    assert isinstance(loaded.lm_head, TernaryLinear)
    with torch.no_grad():
        logits = loaded(ids).logits
    layers = {n for n, m in loaded.named_modules() if isinstance(m, TernaryLinear)}
    torch.testing.assert_close(logits, fake_quant_reference(model, ids, layers), atol=1e-5,
                               rtol=1e-5)


class QATLinear(torch.nn.Linear):
    """Stands in for a quantization-aware layer: an nn.Linear subclass with training state."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        self.load_state_dict(linear.state_dict())
        self.register_buffer("lam", torch.tensor(1.0))


def test_linear_subclasses_export_without_their_training_state(mid_model, tokenizer, tmp_path,
                                                                ids):
    mid_model.model.layers[0].mlp.up_proj = QATLinear(mid_model.model.layers[0].mlp.up_proj)
    stats = export_ternary(mid_model, tokenizer, tmp_path, skip_modules=["lm_head"])
    assert stats["quantized_layers"] == 7
    assert "model.layers.0.mlp.up_proj.lam" not in load_file(tmp_path / "model.safetensors")
    model, _ = load_quantized(tmp_path)
    layers = {n for n, m in model.named_modules() if isinstance(m, TernaryLinear)}
    with torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(logits, fake_quant_reference(mid_model, ids, layers), atol=1e-5,
                               rtol=1e-5)


def test_int8_export_is_close_to_the_float_model(mid_model, tokenizer, tmp_path, ids):
    stats = export_int8(mid_model, tokenizer, tmp_path, skip_modules=["lm_head"])
    assert stats["method"] == "lmpipe_int8" and stats["quantized_layers"] == 7
    assert stats["packed_bytes"] == stats["quantized_weights"]
    assert stats["ratio"] == pytest.approx(0.25 + 4 * (4 * 64 + 2 * 256 + 64) / stats["fp32_bytes"])
    # config.json describes the dequantized float twin; the compact file carries the int8 config
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert stats["file_bytes"] == (tmp_path / INT8_FILE).stat().st_size
    with safe_open(str(tmp_path / INT8_FILE), framework="pt") as f:
        assert json.loads(f.metadata()["quantization_config"]) == {
            "quant_method": "lmpipe_int8", "modules_to_not_convert": ["lm_head"]}
    tensors = load_file(tmp_path / INT8_FILE)
    assert tensors["model.layers.0.mlp.up_proj.weight"].dtype == torch.int8
    assert tensors["model.layers.0.mlp.up_proj.weight_scale"].shape == (256, 1)
    # the compact file saves 3 of every 4 bytes of the float twin's quantized weights, less the
    # scales it adds (the headers differ by a few hundred bytes)
    saved = (tmp_path / "model.safetensors").stat().st_size - stats["file_bytes"]
    assert saved == pytest.approx(3 * stats["quantized_weights"] - stats["scale_bytes"], abs=1000)

    model, _ = load_model(tmp_path)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear  # dequantized at load
    with torch.no_grad():
        logits, reference = model(ids).logits, mid_model(ids).logits
    relative = ((logits - reference).norm() / reference.norm()).item()
    assert relative < 0.02


def test_no_linear_layers_to_quantize_is_a_clear_error(mid_model, tokenizer, tmp_path):
    for export in (export_ternary, export_int8):
        with pytest.raises(ValueError, match="quantize.skip_modules"):
            export(torch.nn.Sequential(torch.nn.Embedding(4, 4)), tokenizer, tmp_path, [])
        with pytest.raises(ValueError, match="quantize.skip_modules"):
            export(mid_model, tokenizer, tmp_path, ["model", "lm_head"])


def test_packed_tensor_with_wrong_shape_is_a_clear_error(tiny_model, tokenizer, tmp_path):
    export_ternary(tiny_model, tokenizer, tmp_path, skip_modules=["lm_head"])
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    key = "model.layers.0.mlp.up_proj.weight"
    tensors[key] = tensors[key][:8].contiguous()  # half the packed rows
    save_file(tensors, weights)
    message = (f"{weights}: {key}: packed shape (8, 16), the config implies (16, 16) for "
               "64 x 16 weights")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(tmp_path)


def test_config_that_disagrees_with_the_file_is_a_clear_error(tiny_model, tokenizer, tmp_path):
    export_ternary(tiny_model, tokenizer, tmp_path, skip_modules=["lm_head"])
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["modules_to_not_convert"] = ["lm_head", "down_proj"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="down_proj.weight_scale belongs to a layer the config "
                                         "does not quantize"):
        load_quantized(tmp_path)
    config["quantization_config"]["modules_to_not_convert"] = []  # lm_head has no packed tensors
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing tensor lm_head.weight of quantized layer"):
        load_quantized(tmp_path)


@pytest.mark.slow
def test_transformers_loader_matches(mid_model, tokenizer, tmp_path, ids):
    """transformers' own BitNet loader reads the export on CPU and computes the same logits.

    Its BitLinear unpacks with torch.compile on every forward: the first forward compiles for
    ~8 s on 2 CPU cores (later ones take milliseconds), so this test is small and marked slow."""
    pytest.importorskip("accelerate")  # transformers' BitNet quantizer requires it
    from transformers import AutoModelForCausalLM
    from transformers.integrations.bitnet import BitLinear

    export_ternary(mid_model, tokenizer, tmp_path, skip_modules=["lm_head"])
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(theirs.model.layers[0].mlp.up_proj, BitLinear)
    ours, _ = load_quantized(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)
