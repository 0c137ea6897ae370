"""Weight initialization schemes (lmpipe.model.init_weights) and RoPE context extension
(lmpipe.model.rope)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmpipe.data.tokenizer import VOCAB_SIZE
from lmpipe.model.build import build_model
from lmpipe.model.init_weights import initialize_
from lmpipe.model.rope import extend_context, rope_parameters
from lmpipe.model.params import ModelParams

D, LAYERS = 128, 4
MID = ModelParams(d_model=D, n_layers=LAYERS, n_heads=4)
TRUNC3 = 0.98658  # std of a normal truncated at +-3 std, relative to the untruncated std


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run fastest on one thread and stay fast on a busy machine (see test_optim)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _expected(scheme: str, layer: int) -> dict[str, float]:
    """Formula stds for q_proj, o_proj and down_proj of `layer`, and the embedding."""
    if scheme == "hf":
        return {"q": 0.02, "o": 0.02, "down": 0.02, "embed": 0.02}
    if scheme == "gpt2_scaled":
        res = 0.02 / math.sqrt(2 * LAYERS)
        return {"q": 0.02, "o": res, "down": res, "embed": 0.02}
    if scheme == "small":
        s = math.sqrt(2 / (5 * D))
        return {"q": s, "o": s, "down": s, "embed": s}
    depth = math.sqrt(2 * (layer + 1))
    return {"q": TRUNC3 / math.sqrt(D), "o": TRUNC3 / math.sqrt(D) / depth,
            "down": TRUNC3 / math.sqrt(4 * D) / depth, "embed": TRUNC3 / math.sqrt(D)}


def _model(scheme: str, seed: int = 1, build_seed: int = 0, **kw):
    model = build_model(MID.model_copy(update=kw), seed=build_seed)
    initialize_(model, scheme, seed=seed)
    return model


@pytest.mark.parametrize("scheme", ["hf", "gpt2_scaled", "small", "mitchell"])
def test_stds_match_the_formulas(scheme):
    model = _model(scheme)
    for layer in (0, LAYERS - 1):
        block = model.model.layers[layer]
        want = _expected(scheme, layer)
        got = {"q": block.self_attn.q_proj.weight.std().item(),
               "o": block.self_attn.o_proj.weight.std().item(),
               "down": block.mlp.down_proj.weight.std().item(),
               "embed": model.model.embed_tokens.weight.std().item()}
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=0.1), (scheme, layer, key, got, want)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name


def test_mitchell_is_truncated_at_three_std():
    model = _model("mitchell")
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.abs().max().item() <= 3 / math.sqrt(D) + 1e-6
    o = model.model.layers[LAYERS - 1].self_attn.o_proj.weight
    assert o.abs().max().item() <= 3 / math.sqrt(D) / math.sqrt(2 * LAYERS) + 1e-6


@torch.no_grad()
def test_reinitializing_resets_norms_and_biases():
    model = build_model(MID.model_copy(update={"n_layers": 1}), seed=0)
    model.model.norm.weight.fill_(2.0)
    q = model.model.layers[0].self_attn.q_proj
    q.bias = torch.nn.Parameter(torch.ones(q.out_features))
    initialize_(model, "small", seed=0)
    assert torch.equal(model.model.norm.weight, torch.ones(D))
    assert torch.equal(q.bias, torch.zeros(q.out_features))

def test_untied_head_is_initialized_as_a_linear_layer():
    model = _model("mitchell", tie_embeddings=False)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert model.lm_head.weight.std().item() == pytest.approx(TRUNC3 / math.sqrt(D), rel=0.1)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


@pytest.mark.parametrize("scheme", ["gpt2_scaled", "small", "mitchell"])
def test_seed_alone_decides_the_weights(scheme):
    small = {"d_model": 32, "n_layers": 2}
    a = _model(scheme, seed=5, build_seed=0, **small).state_dict()
    torch.manual_seed(123)  # the global RNG and the build seed must not matter
    b = _model(scheme, seed=5, build_seed=9, **small).state_dict()
    c = _model(scheme, seed=6, build_seed=0, **small).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"],
                           c["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_hf_is_a_no_op_and_unknown_scheme_is_refused():
    model = build_model(MID, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initialize_(model, "hf", seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="hf, gpt2_scaled, small, mitchell"):
        initialize_(model, "xavier", seed=0)


# --- context extension -------------------------------------------------------------------------

L = 32
SHORT = ModelParams(d_model=32, n_layers=1, n_heads=2, max_seq_len=L)


def _ids(n: int) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (1, n), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_linear_extension_halves_the_frequencies_and_survives_a_reload(tmp_path):
    model = build_model(SHORT, seed=0).eval()
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    ids = _ids(2 * L)
    before = model(input_ids=ids).logits
    assert extend_context(model, 2 * L, "linear", 2.0) is model
    assert model.config.max_position_embeddings == 2 * L
    assert model.config.rope_parameters == {"rope_type": "linear", "rope_theta": 10000.0,
                                            "factor": 2.0}
    # transformers implements position interpolation by dividing every inverse frequency
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, inv_freq / 2.0)
    after = model(input_ids=ids).logits
    assert after.shape == (1, 2 * L, VOCAB_SIZE) and torch.isfinite(after).all()
    assert torch.equal(after[:, 0], before[:, 0])  # position 0 has no rotation to scale
    assert not torch.allclose(after[:, 1:], before[:, 1:])
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.rope_parameters["rope_type"] == "linear"
    assert reloaded.config.rope_parameters["factor"] == 2.0
    assert reloaded.config.max_position_embeddings == 2 * L
    torch.testing.assert_close(reloaded.model.rotary_emb.inv_freq, inv_freq / 2.0)
    assert torch.equal(reloaded(input_ids=ids).logits, after)


@torch.no_grad()
def test_yarn_keeps_the_trained_length_and_scales_attention(tmp_path):
    model = build_model(SHORT, seed=0).eval()
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    extend_context(model, 4 * L, "yarn", 4.0)
    params = model.config.rope_parameters
    assert params["rope_type"] == "yarn" and params["factor"] == 4.0
    assert params["original_max_position_embeddings"] == L
    assert model.config.max_position_embeddings == 4 * L
    rotary = model.model.rotary_emb
    assert rotary.attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
    assert rotary.inv_freq[0] == inv_freq[0]  # fastest rotation kept (extrapolated)
    assert rotary.inv_freq[-1] == pytest.approx(inv_freq[-1] / 4.0)  # slowest interpolated
    ids = _ids(4 * L)
    logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.rope_parameters["original_max_position_embeddings"] == L
    assert torch.equal(reloaded(input_ids=ids).logits, logits)


@torch.no_grad()
def test_dynamic_scales_only_past_the_trained_length():
    model = build_model(SHORT, seed=0).eval()
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    extend_context(model, 2 * L, "dynamic", 2.0)
    assert model.config.rope_parameters["factor"] == 2.0
    # transformers' dynamic NTK starts scaling past max_position_embeddings: it stays the trained L
    assert model.config.max_position_embeddings == L
    model(input_ids=_ids(L))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, inv_freq)
    model(input_ids=_ids(2 * L))
    scaled = model.model.rotary_emb.inv_freq
    assert scaled[0] == inv_freq[0] and (scaled[1:] < inv_freq[1:]).all()


def test_none_raises_the_limit_only_and_bad_input_is_refused():
    model = build_model(SHORT, seed=0)
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    extend_context(model, 2 * L, "none", 1.0)
    assert model.config.max_position_embeddings == 2 * L
    assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, inv_freq)
    with pytest.raises(ValueError, match="none, linear, dynamic, yarn"):
        extend_context(model, 4 * L, "ntk", 2.0)
    with pytest.raises(ValueError, match="shorter"):
        extend_context(model, L, "linear", 2.0)
    with pytest.raises(ValueError, match="rope_factor"):
        extend_context(model, 4 * L, "linear", 0.5)


def test_rope_parameters_for_a_fresh_model():
    assert rope_parameters(SHORT) == {"rope_type": "default", "rope_theta": 10000.0}
    lin = SHORT.model_copy(update={"rope_scaling": "linear", "rope_factor": 2.0})
    assert rope_parameters(lin) == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    yarn = SHORT.model_copy(update={"rope_scaling": "yarn", "rope_factor": 4.0})
    assert rope_parameters(yarn) == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                     "original_max_position_embeddings": L}
