"""The teacher cache: the teacher's top-k next-token log-probs at every training position.

The teacher runs once; every distillation run then reads its signal from disk. Files:
`ids.npy` (N x k token ids, uint16), `logprobs.npy` (N x k log-probs, float16), both memory-mapped
on read and indexed by the flat position in the train token stream, and `manifest.json`, which
names the teacher weights and tokenizer by content hash so a stale cache is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmpipe.batching import LengthGroupedBatches
from lmpipe.tokens import TokenSplit

FORMAT_VERSION = 1


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model_dir: str | Path) -> dict[str, str]:
    """Content hashes of a model directory's weights and tokenizer."""
    model_dir = Path(model_dir)
    return {"teacher_sha256": file_sha256(model_dir / "model.safetensors"),
            "tokenizer_sha256": file_sha256(model_dir / "tokenizer.json")}


@torch.no_grad()
def write_cache(model: torch.nn.Module, split: TokenSplit, top_k: int, pad_id: int,
                out_dir: str | Path, batch_size: int, fingerprint: dict[str, str],
                batches=None) -> dict:
    """Run the teacher over `split` once and store its top-k at every input position.

    `batches` (anything with `.sequential(batch_size)`, default whole documents) should match how
    the teacher was trained: windows for window-trained teachers, so no input exceeds its context.
    """
    vocab = model.config.vocab_size
    if not 1 <= top_k <= vocab:
        raise ValueError(f"teacher_cache.top_k = {top_k}: expected 1 <= top_k <= {vocab} (vocabulary)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = split.n_tokens
    ids = np.lib.format.open_memmap(out / "ids.npy", mode="w+", dtype=np.uint16, shape=(n, top_k))
    logprobs = np.lib.format.open_memmap(out / "logprobs.npy", mode="w+", dtype=np.float16,
                                         shape=(n, top_k))
    model.eval()
    source = batches if batches is not None else LengthGroupedBatches(split, batch_size, 0, pad_id)
    for batch in tqdm(source.sequential(batch_size), desc="teacher_cache", mininterval=2.0,
                      disable=None):
        logp = torch.log_softmax(model(input_ids=batch.input_ids).logits.float(), dim=-1)
        top = logp.topk(top_k, dim=-1)
        real = batch.positions >= 0
        where = batch.positions[real].numpy()
        ids[where] = top.indices[real].numpy().astype(np.uint16)
        logprobs[where] = top.values[real].numpy().astype(np.float16)
    ids.flush()
    logprobs.flush()
    manifest = {"format_version": FORMAT_VERSION, "top_k": top_k, "positions": n,
                "vocab_size": vocab, "ids_dtype": "uint16", "logprobs_dtype": "float16",
                **fingerprint}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class TeacherCache:
    ids: np.ndarray
    logprobs: np.ndarray
    manifest: dict

    @classmethod
    def open(cls, folder: str | Path, expect: dict[str, str] | None = None) -> "TeacherCache":
        """Memory-map a cache; `expect` (e.g. the tokenizer hash) must match the manifest."""
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no teacher cache (run teacher_cache first)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: format_version {manifest.get('format_version')}, "
                             f"expected {FORMAT_VERSION}; rebuild the cache")
        for key, value in (expect or {}).items():
            if manifest.get(key) != value:
                raise ValueError(f"{manifest_path}: {key} is {manifest.get(key)}, expected {value}; "
                                 "the cache was built for other inputs, rebuild it")
        return cls(np.load(folder / "ids.npy", mmap_mode="r"),
                   np.load(folder / "logprobs.npy", mmap_mode="r"), manifest)
