"""The teacher cache's format: what is stored per position and how it is encoded (ids at the
smallest integer width, log-probs in u8/fp16/fp32, the missing mass and the tempered tail), the
manifest's version and the teacher's identity. The cache as a whole is described in
lmpipe/distill/cache/__init__.py."""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmpipe.core.artifacts import file_sha256, tokenizer_identity

FORMAT_VERSION = 3  # 3: the manifest holds every shard file's sha256 (+ optional `tail` column)
REBUILD = "rebuild it: dvc repro -f teacher_cache"
SHARD_BOUNDS = ("start", "end")
LOGPROB_STEP = 1.0 / 16.0  # u8 log-prob codes: logp = -code * step, so codes span [-15.94, 0]
LOGPROB_DTYPES = {"u8": np.uint8, "fp16": np.float16, "fp32": np.float32}
# the missing mass is a log, often tiny or -inf: keep it in a float, wide when log-probs are fp32
MISSING_DTYPES = {"u8": np.float16, "fp16": np.float16, "fp32": np.float32}
HIDDEN_DTYPES = {"fp16": np.float16, "fp32": np.float32}


def model_fingerprint(model_dir: str | Path) -> dict[str, str]:
    """What identifies a model directory: its weights' file hash and its tokenizer's identity
    (`tokenizer_identity`: what maps text to ids, not transient padding state)."""
    model_dir = Path(model_dir)
    return {"teacher_sha256": file_sha256(model_dir / "model.safetensors"),
            "tokenizer_sha256": tokenizer_identity(model_dir)}


def shard_files(shard: dict) -> dict[str, str]:
    """A manifest shard entry's arrays: name -> file name."""
    return {name: file for name, file in shard.items() if name not in SHARD_BOUNDS}


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer type that holds every token id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} ids does not fit 32 bits")


def encode_logprobs(logprobs: torch.Tensor, fmt: str) -> np.ndarray:
    """Top-k log-probs (<= 0) in the cache's storage format."""
    values = logprobs.float().numpy()
    if fmt == "u8":
        return np.clip(np.rint(-values / LOGPROB_STEP), 0, 255).astype(np.uint8)
    return values.astype(LOGPROB_DTYPES[fmt])


def decode_logprobs(stored: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "u8":
        return stored.astype(np.float32) * np.float32(-LOGPROB_STEP)
    return stored.astype(np.float32)


def top_k_with_missing(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """(ids, log-probs) of the k most likely tokens, sorted, and the log of the remaining mass
    (computed exactly over the other tokens, -inf when k is the whole vocabulary)."""
    top = logprobs.topk(k, dim=-1)
    rest = logprobs.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    return top.indices, top.values, rest


def log_tempered_tail(logprobs: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log sum_{j not in ids} p_j^(1/T) per row (the tempered tail, module docstring), exactly
    from the full log-probs; -inf when `ids` covers the vocabulary."""
    rest = logprobs.float().scatter(-1, ids, float("-inf"))
    return (rest / temperature).logsumexp(-1)


@dataclass(frozen=True)
class CacheSpec:
    """What to store: k, the log-prob encoding, the shard size and the hidden layers to keep
    (0 is the embedding output, L the last layer, in every architecture:
    lmpipe/model/hidden_states.py) and
    the blocks whose attention rows to keep (1..L)."""

    top_k: int
    logprobs: str = "u8"
    shard_positions: int = 1 << 20
    hidden_layers: tuple[int, ...] = ()
    hidden_dtype: str = "fp16"
    attention_layers: tuple[int, ...] = ()  # blocks 1..L; stored in hidden_dtype
    temperature: float = 1.0  # the distill temperature whose tempered tail to store (if != 1)

    def stores_tail(self, vocab_size: int) -> bool:
        """Whether the tempered tail needs its own column: T != 1 and a non-empty tail."""
        return self.temperature != 1.0 and self.top_k < vocab_size


def cache_bytes(folder: str | Path, manifest: dict, hidden: bool = False) -> int:
    """Bytes on disk of the distribution files (ids, log-probs, missing mass), headers included;
    with `hidden`, the cached hidden states and attention rows too."""
    total = 0
    for shard in manifest["shards"]:
        for name, file in shard_files(shard).items():
            if name.startswith(("hidden", "attn")) and not hidden:
                continue
            total += (Path(folder) / file).stat().st_size
    return total


def ramp(lengths: np.ndarray) -> np.ndarray:
    """0..l-1 for each l in `lengths`, concatenated: offsets inside ragged attention rows."""
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
