"""Fresh models built from a transformers config (llama, mamba, mamba2 or hawk: `model.arch`), and
saving/loading them with a tokenizer.

Each architecture's config is made by its own function (`llama_config` here, lmpipe/model/mamba.py,
lmpipe/model/mamba2.py, lmpipe/model/hawk.py) with the same protocol token ids; `build_model` picks
one by `arch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2ForCausalLM,
    MambaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    RecurrentGemmaForCausalLM,
)

from lmpipe.core import protocol
from lmpipe.data.tokenizer import VOCAB_SIZE, load_tokenizer, special_id
from lmpipe.model.hawk import hawk_config
from lmpipe.model.init_weights import initialize_
from lmpipe.model.mamba import mamba_config
from lmpipe.model.mamba2 import mamba2_config
from lmpipe.model.params import ModelParams
from lmpipe.model.rope import rope_parameters
from lmpipe.quant.packed_load import load_quantized, quantization_config_of


def _protocol_ids(tokenizer) -> dict[str, int]:
    """The protocol's token ids in `tokenizer` (the byte tokenizer's when none is given)."""
    if tokenizer is None:
        return {t: special_id(t) for t in protocol.SPECIAL_TOKENS} | {"vocab": VOCAB_SIZE}
    ids = dict(zip(protocol.SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(protocol.SPECIAL_TOKENS)))
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"the tokenizer lacks lmpipe's special tokens {missing}")
    return ids | {"vocab": len(tokenizer)}


def llama_config(params: ModelParams, tokenizer=None) -> LlamaConfig:
    """The config of a fresh Llama sized for `tokenizer` (default: the byte tokenizer)."""
    return _llama_config(params, _protocol_ids(tokenizer))


def _llama_config(params: ModelParams, ids: dict[str, int]) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=ids["vocab"],
        hidden_size=params.d_model,
        intermediate_size=params.d_ff or 4 * params.d_model,
        num_hidden_layers=params.n_layers,
        num_attention_heads=params.n_heads,
        num_key_value_heads=params.n_kv_heads or params.n_heads,
        max_position_embeddings=params.max_seq_len,
        rope_parameters=rope_parameters(params),
        tie_word_embeddings=params.tie_embeddings,
        bos_token_id=ids[protocol.BOS],
        eos_token_id=ids[protocol.EOS],
        pad_token_id=ids[protocol.PAD],
    )


# arch -> (the transformers class, its config from (params, protocol ids))
ARCHITECTURES = {
    "llama": (LlamaForCausalLM, _llama_config),
    "mamba": (MambaForCausalLM, mamba_config),
    "mamba2": (Mamba2ForCausalLM, mamba2_config),
    "hawk": (RecurrentGemmaForCausalLM, hawk_config),
}


def model_config(params: ModelParams, tokenizer=None) -> PreTrainedConfig:
    """The transformers config of `params.arch`, sized for `tokenizer` (default: the byte
    tokenizer)."""
    _, make_config = ARCHITECTURES[params.arch]
    return make_config(params, _protocol_ids(tokenizer))


def build_model(params: ModelParams, seed: int, tokenizer=None) -> PreTrainedModel:
    """A freshly initialized model of `params.arch` sized for `tokenizer` (default: the byte
    tokenizer); the seed fixes the initial weights."""
    ids = _protocol_ids(tokenizer)
    model_class, make_config = ARCHITECTURES[params.arch]
    torch.manual_seed(seed)
    model = model_class(make_config(params, ids))
    initialize_(model, params.init, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[protocol.END], ids[protocol.EOS]],
        pad_token_id=ids[protocol.PAD],
        bos_token_id=ids[protocol.BOS],
        do_sample=False,
        # a cache-free generate for hawk: transformers' cached path fails on it (lmpipe/model/hawk.py)
        **({"use_cache": False} if params.arch == "hawk" else {}),
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@contextlib.contextmanager
def _no_transient_state(tokenizer) -> Iterator[None]:
    """Padding and truncation switched off in the tokenizer's backend for the duration, then
    restored: they are per-call state (any padded call switches padding on), not part of the
    tokenizer, and must not be written into tokenizer.json."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer keeps no such state
        yield
        return
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding()
    backend.no_truncation()
    try:
        yield
    finally:
        if padding is not None:
            backend.enable_padding(**padding)
        if truncation is not None:
            backend.enable_truncation(**truncation)


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """`save_pretrained` without the backend's transient padding/truncation state, so the same
    tokenizer always saves the same tokenizer.json."""
    with _no_transient_state(tokenizer):
        tokenizer.save_pretrained(folder)
    return Path(folder)


def save_model(model: torch.nn.Module, tokenizer, folder: str | Path,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """The model (safetensors, config) and its tokenizer as a transformers directory;
    `state_dict`: its weights gathered whole, when the model itself holds shards."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    save_tokenizer(tokenizer, folder)
    return folder


def load_model(folder: str | Path) -> tuple[torch.nn.Module, object]:
    """Load a saved model directory (safetensors weights) and its tokenizer, in eval mode. Packed
    ternary and int8 exports go through lmpipe.quant.packed_load."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a model directory (no config.json)")
    if quantization_config_of(folder) is not None:  # packed ternary or int8: lmpipe's own loader
        return load_quantized(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    return model, load_tokenizer(folder)


def tensor_headers(path: str | Path) -> dict[str, dict]:
    """A safetensors file's tensors, name -> {"dtype", "shape", ...}, read from its header alone
    (no weights loaded)."""
    import json

    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return header
