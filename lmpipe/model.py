"""Llama-style models built from a transformers config, and saving/loading them with a tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from lmpipe import protocol
from lmpipe.config import ModelParams
from lmpipe.context import rope_parameters
from lmpipe.init import initialize_
from lmpipe.tokenizer import VOCAB_SIZE, load_tokenizer, special_id


def llama_config(params: ModelParams, vocab_size: int = VOCAB_SIZE) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=params.d_model,
        intermediate_size=params.d_ff or 4 * params.d_model,
        num_hidden_layers=params.n_layers,
        num_attention_heads=params.n_heads,
        num_key_value_heads=params.n_kv_heads or params.n_heads,
        max_position_embeddings=params.max_seq_len,
        rope_parameters=rope_parameters(params),
        tie_word_embeddings=params.tie_embeddings,
        bos_token_id=special_id(protocol.BOS),
        eos_token_id=special_id(protocol.EOS),
        pad_token_id=special_id(protocol.PAD),
    )


def build_model(params: ModelParams, seed: int) -> LlamaForCausalLM:
    """A freshly initialized model; the seed fixes the initial weights."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(params))
    initialize_(model, params.init, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=[special_id(protocol.END), special_id(protocol.EOS)],
        pad_token_id=special_id(protocol.PAD),
        bos_token_id=special_id(protocol.BOS),
        do_sample=False,
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_model(model: torch.nn.Module, tokenizer, folder: str | Path) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def load_model(folder: str | Path) -> tuple[torch.nn.Module, object]:
    """Load a saved model directory (safetensors weights) and its tokenizer, in eval mode."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    return model, load_tokenizer(folder)
