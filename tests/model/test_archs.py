"""The architectures of `model.arch` (llama, mamba, mamba2, hawk): built with lmpipe's protocol ids,
sized by parameter count, saved and reloaded as plain transformers models, their params checked
with errors that name the field."""

import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmpipe.core import protocol
from lmpipe.core.section import ConfigError
from lmpipe.model.build import build_model, count_parameters, load_model, save_model
from lmpipe.model.mamba import parallel_scans
from lmpipe.model.params import ARCHS, ModelParams
from lmpipe.model.sizing import parameters_at, width_for_params, width_step
from lmpipe.params.config import validate_params

TINY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_state": 4, "max_seq_len": 64}
CLASSES = {"llama": "LlamaForCausalLM", "mamba": "MambaForCausalLM",
           "mamba2": "Mamba2ForCausalLM", "hawk": "RecurrentGemmaForCausalLM"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tie", [True, False])
def test_each_arch_has_the_protocol_ids_and_honours_tied_embeddings(arch, tie, tokenizer):
    model = build_model(ModelParams(arch=arch, tie_embeddings=tie, **TINY), seed=0, tokenizer=tokenizer)
    assert type(model).__name__ == CLASSES[arch]
    ids = dict(zip(protocol.SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(protocol.SPECIAL_TOKENS)))
    config, generation = model.config, model.generation_config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == \
        (ids[protocol.BOS], ids[protocol.EOS], ids[protocol.PAD])
    assert generation.eos_token_id == [ids[protocol.END], ids[protocol.EOS]]
    assert (generation.pad_token_id, generation.bos_token_id) == (ids[protocol.PAD], ids[protocol.BOS])
    assert config.vocab_size == len(tokenizer)
    shared = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert shared == tie


def test_same_seed_same_weights_other_seed_other_weights():
    for arch in ("mamba", "mamba2", "hawk"):
        a, b, c = (build_model(ModelParams(arch=arch, **TINY), seed=s) for s in (3, 3, 4))
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                         c.state_dict().values()))


@pytest.mark.parametrize("arch", ARCHS)
def test_width_for_params_brings_each_arch_within_3_percent_of_150k(arch):
    params = ModelParams(arch=arch, n_layers=2)
    width = width_for_params(params, 150_000)
    built = build_model(params.model_copy(update={"d_model": width}), seed=0)
    assert parameters_at(params, width) == count_parameters(built)
    assert abs(count_parameters(built) - 150_000) <= 0.03 * 150_000
    # the nearest width: one step either way is farther from the target
    step = {"llama": 4, "mamba": 1, "mamba2": 8, "hawk": 2}[arch]
    assert all(abs(parameters_at(params, w) - 150_000) >= abs(count_parameters(built) - 150_000)
               for w in (width - step, width + step))


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_model_reloads_with_identical_logits(arch, tokenizer, tmp_path):
    model = build_model(ModelParams(arch=arch, tie_embeddings=False, **TINY), seed=1).eval()
    save_model(model, tokenizer, tmp_path)
    ids = torch.tensor([tokenizer("Where was Al Bo born?")["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        loaded, _ = load_model(tmp_path)
        plain = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
        assert type(plain).__name__ == CLASSES[arch]
        assert torch.equal(loaded(input_ids=ids).logits, want)
        assert torch.equal(plain(input_ids=ids).logits, want)
    assert plain.generation_config.eos_token_id == model.generation_config.eos_token_id


def test_llama_params_dump_as_before_arch_existed():
    assert list(ModelParams().model_dump()) == [
        "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "rope_theta",
        "rope_scaling", "rope_factor", "tie_embeddings", "init"]
    mamba = ModelParams(arch="mamba").model_dump()
    assert mamba["arch"] == "mamba" and "n_heads" not in mamba and "lru_blocks" not in mamba
    assert "head_dim" not in mamba and "head_dim" not in ModelParams().model_dump()
    assert ModelParams.model_validate(mamba) == ModelParams(arch="mamba")
    mamba2 = ModelParams(arch="mamba2", head_dim=8).model_dump()
    assert list(mamba2) == ["arch", "d_model", "n_layers", "max_seq_len", "tie_embeddings", "init",
                            "d_state", "expand", "d_conv", "head_dim"]
    assert ModelParams.model_validate(mamba2) == ModelParams(arch="mamba2", head_dim=8)


def _error(model: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_params({"teacher": {"model": model}})
    return str(caught.value)


@pytest.mark.parametrize("model, expected", [
    ({"arch": "gru"}, r"teacher\.model\.arch: .*'llama', 'mamba', 'mamba2' or 'hawk'"),
    ({"arch": "mamba", "d_state": 0}, r"teacher\.model\.d_state: .*greater than or equal to 1"),
    ({"arch": "mamba", "d_conv": 1}, r"teacher\.model\.d_conv: .*greater than or equal to 2"),
    ({"arch": "mamba", "expand": 0}, r"teacher\.model\.expand: .*greater than or equal to 1"),
    ({"arch": "hawk", "lru_width": 30, "lru_blocks": 4},
     r"teacher\.model\.lru_blocks: lru_width \(30\) is not divisible by lru_blocks \(4\)"),
    ({"arch": "hawk", "lru_blocks": 3},
     r"teacher\.model\.lru_blocks: lru_width \(64\) is not divisible"),
    ({"arch": "mamba2", "d_model": 60},
     (r"teacher\.model\.head_dim: the inner width expand \* d_model = 2 \* 60 = 120 is not "
      r"divisible by head_dim \(16\)")),
    ({"arch": "mamba2", "head_dim": 0}, r"teacher\.model\.head_dim: .*greater than or equal to 1"),
    ({"arch": "mamba2", "init": "small"},
     (r"teacher\.model\.init: 'small' is a scheme for llama's layers; expected 'hf' for arch "
      r"mamba2")),
    ({"arch": "mamba", "init": "mitchell"},
     r"teacher\.model\.init: 'mitchell' is a scheme for llama's layers; expected 'hf' for arch mamba"),
])
def test_a_bad_arch_field_is_named(model, expected):
    assert re.search(expected, _error(model))


def test_llama_only_fields_do_not_invalidate_other_archs():
    for arch in ("mamba", "mamba2", "hawk"):  # 30 / 4 heads and an odd head width fail llama
        ModelParams(arch=arch, d_model=30, n_heads=4, n_kv_heads=3, rope_scaling="yarn",
                    lru_blocks=2, head_dim=4)
    ModelParams(d_model=60, head_dim=16)  # head_dim is mamba2's alone
    assert "n_heads" in _error({"d_model": 30, "n_heads": 4})


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_flops_per_token_counts_every_matmul_weight_of_a_recurrent_model(arch):
    from lmpipe.core.profiler import flops_per_token

    model = build_model(ModelParams(arch=arch, tie_embeddings=False, **TINY), seed=0)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    gates = sum(p.numel() for n, p in model.named_parameters() if n.endswith("gate_weight"))
    assert flops_per_token(model.config, seq_len=50) == 6 * (weights + gates)


def test_mamba_scans_in_parallel_and_agrees_with_the_sequential_scan(tokenizer):
    # mamba.py's parallel scan (use_mambapy) against transformers' own one-position-at-a-time
    # loop on the same weights: logits and gradients
    model = build_model(ModelParams(arch="mamba", **TINY), seed=0, tokenizer=tokenizer)
    mixers = [m for m in model.modules() if hasattr(m, "use_mambapy")]
    # built (and saved) with the loop; the training loop switches the scan on
    assert not model.config.use_mambapy and mixers and not any(m.use_mambapy for m in mixers)
    ids = torch.randint(0, len(tokenizer), (3, 37), generator=torch.Generator().manual_seed(0))
    results = []
    for parallel in (True, False):
        parallel_scans(model, parallel)
        assert all(m.use_mambapy == parallel for m in mixers)
        model.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        results.append((out.logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (logits, grads), (reference, reference_grads) = results
    assert (logits - reference).abs().max().item() < 1e-5
    assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, reference_grads))
    # the two paths really differ in how they compute (equal to the last bit would mean one path)
    assert not torch.equal(logits, reference)


def test_a_mamba2_card_names_its_heads_and_inner_width(tokenizer, tmp_path):
    from lmpipe.model.card import write_model_card
    from lmpipe.params.config import validate_params

    model = build_model(ModelParams(arch="mamba2", **TINY), seed=0)
    save_model(model, tokenizer, tmp_path)
    card = write_model_card(tmp_path, name="teacher", stage="train",
                            params=validate_params({}).model_dump(mode="json"))
    facts = dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", card.read_text(), re.MULTILINE))
    # d_model 16, expand 2: an inner width of 32 in heads of 16 channels
    assert facts["SSM heads"] == "2 of 16 channels" and facts["inner width"] == "32"
    assert facts["architecture"] == "Mamba2ForCausalLM" and "attention heads" not in facts
    assert "MLP width" not in facts and "context" not in facts


def test_mamba2_widths_split_into_heads_at_llamas_sizes():
    # head_dim 16, expand 2: d_model a multiple of 8, within 5% of llama's 48 / 64 / 96 widths
    params = ModelParams(arch="mamba2", n_layers=2)
    llama = ModelParams(n_layers=2)
    for llama_width, width in ((48, 72), (64, 96), (96, 144)):
        target = parameters_at(llama, llama_width)
        assert width_for_params(params, target) == width
        assert abs(parameters_at(params, width) - target) <= 0.05 * target
    # finer heads, a finer step: 148 (not a multiple of 8) is nearest llama's 320,832
    assert width_step(params.model_copy(update={"head_dim": 8})) == 4
    assert width_for_params(params.model_copy(update={"head_dim": 8}), 320_832) == 148
    assert width_step(params.model_copy(update={"expand": 3})) == 16  # 3 * d_model in 16s
