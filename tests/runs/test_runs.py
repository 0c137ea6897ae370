"""Starting a run from a saved model: context extension with RoPE scaling, and bad input."""

import pytest
import torch

from lmpipe.model.build import build_model, save_model
from lmpipe.core.section import ConfigError
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams
from lmpipe.runs.training import start_model


def test_init_from_continues_a_saved_model_at_a_longer_context(tmp_path, tokenizer):
    short = ModelParams(d_model=16, n_layers=1, n_heads=2, max_seq_len=64)
    saved = build_model(short, seed=3)
    save_model(saved, tokenizer, tmp_path)
    longer = short.model_copy(update={"max_seq_len": 128, "rope_scaling": "linear", "rope_factor": 2.0})
    model = start_model(longer, TrainParams(init_from=str(tmp_path)))
    assert model.config.max_position_embeddings == 128
    assert model.config.rope_parameters["factor"] == 2.0
    for name, weight in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
    ids = torch.randint(0, 256, (1, 100))
    with torch.no_grad():  # positions are stretched: the logits are not the unscaled model's
        assert not torch.allclose(model(input_ids=ids).logits, saved(input_ids=ids).logits)


def test_init_from_with_another_architecture_is_refused(tmp_path, tokenizer):
    save_model(build_model(ModelParams(d_model=16, n_layers=1, n_heads=2), seed=0), tokenizer, tmp_path)
    with pytest.raises(ConfigError, match="its hidden_size is 16, the model section says 32"):
        start_model(ModelParams(d_model=32, n_layers=1, n_heads=2), TrainParams(init_from=str(tmp_path)))


def test_fresh_start_uses_the_init_scheme_and_seed():
    params = ModelParams(d_model=32, n_layers=2, n_heads=2, init="gpt2_scaled")
    a = start_model(params, TrainParams(seed=1))
    b = start_model(params, TrainParams(seed=1))
    assert torch.equal(a.model.layers[0].mlp.down_proj.weight, b.model.layers[0].mlp.down_proj.weight)
    std = a.model.layers[0].mlp.down_proj.weight.std().item()
    assert std == pytest.approx(0.02 / (2 * 2) ** 0.5, rel=0.1)


def test_init_from_with_a_larger_vocabulary_is_refused(tmp_path, tokenizer):
    from transformers import PreTrainedTokenizerFast

    from lmpipe.core import protocol

    save_model(build_model(ModelParams(d_model=16, n_layers=1, n_heads=2), seed=0), tokenizer, tmp_path)
    bigger = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(
        tokenizer.backend_tokenizer.to_str()))
    bigger.add_special_tokens({"additional_special_tokens": protocol.SPECIAL_TOKENS + ["<|extra|>"]})
    with pytest.raises(ConfigError, match="its embedding has 265 rows, the tokenizer has 266 tokens"):
        start_model(ModelParams(d_model=16, n_layers=1, n_heads=2), TrainParams(init_from=str(tmp_path)),
                    bigger)


def test_a_pretrained_directory_is_imported_and_grown_to_the_tokenizer(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from lmpipe.model.pretrained import import_pretrained

    smaller = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2), seed=4)
    smaller.resize_token_embeddings(260)  # as if the model predates lmpipe's protocol tokens
    smaller.save_pretrained(tmp_path / "hf")
    model = import_pretrained(str(tmp_path / "hf"), tokenizer, tmp_path / "teacher")
    assert model.config.vocab_size == len(tokenizer) == 265
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    assert torch.equal(reloaded.model.embed_tokens.weight[:260], smaller.model.embed_tokens.weight)
    # new rows are drawn around the old rows' mean with their covariance (mean resizing)
    old = smaller.model.embed_tokens.weight.detach()
    spread = (old - old.mean(0)).norm(dim=-1).mean()
    new = reloaded.model.embed_tokens.weight[260:].detach()
    assert ((new - old.mean(0)).norm(dim=-1) < 3 * spread).all()
    with pytest.raises(ConfigError, match="expected 'smollm2', a .gguf file or a transformers"):
        import_pretrained(str(tmp_path / "nothing"), tokenizer, tmp_path / "x")

