"""Packed token arrays: the `tokenize` stage's output and every trainer's input.

A split is three files: `<split>.tokens.bin` (token ids: uint16 when the vocabulary fits, else
uint32, as `meta.json` records), `<split>.mask.bin` (1 where a token is a training target, uint8)
and `<split>.docs.npy` (one `[start, end)` row per document), all memory-mapped when read.
Documents stay whole so a batch never starts mid-dialog.

`meta.json` records the vocabulary size, the id dtype, the loss rule, per split its counts
(documents, tokens, target tokens, the longest document in tokens) and the sha256 of every file;
`TokenSplit.open` checks a split's files against those hashes, so a corrupted array is refused
with the file named instead of being trained on.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmpipe.artifacts import ArtifactError, file_sha256, verify_sha256
from lmpipe.tokenizer import loss_mask
from lmpipe.tokenizer_kinds import token_dtype

PARTS = ("tokens.bin", "mask.bin", "docs.npy")
REBUILD = "rebuild it: dvc repro -f tokenize"


def split_files(split: str) -> list[str]:
    """The file names of one split, in `PARTS` order."""
    return [f"{split}.{part}" for part in PARTS]


def read_meta(folder: str | Path) -> dict:
    """A token folder's `meta.json`, refused when missing, unreadable or without file hashes."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing, so the token files cannot be checked; {REBUILD}")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); {REBUILD}") from None
    if not isinstance(meta.get("sha256"), dict):
        raise ArtifactError(f"{path}: written by an older lmpipe (no file hashes), so the token "
                            f"files cannot be checked; {REBUILD}")
    return meta


@dataclass
class TokenSplit:
    tokens: np.ndarray
    mask: np.ndarray
    docs: np.ndarray  # (n_docs, 2) int64 [start, end)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def lengths(self) -> np.ndarray:
        return self.docs[:, 1] - self.docs[:, 0]

    @classmethod
    def open(cls, folder: str | Path, split: str) -> "TokenSplit":
        """Memory-map a split after checking its files against `meta.json`'s hashes (checked
        once per process while a file is unchanged)."""
        folder = Path(folder)
        paths = [folder / name for name in split_files(split)]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing token file (run the tokenize stage first)")
        meta = read_meta(folder)
        for path in paths:
            expected = meta["sha256"].get(path.name)
            if expected is None:
                raise ArtifactError(f"{folder / 'meta.json'}: no sha256 recorded for {path.name}; "
                                    f"{REBUILD}")
            verify_sha256(path, expected, REBUILD)
        return cls(
            tokens=np.memmap(paths[0], dtype=np.dtype(meta["dtype"]), mode="r"),
            mask=np.memmap(paths[1], dtype=np.uint8, mode="r"),
            docs=np.load(paths[2]),
        )


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of document indices into (train, val); val holds at least one document."""
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n_docs * val_fraction)) if n_docs > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def write_split(folder: Path, split: str, encoded: list[list[int]], loss_on: str,
                tokenizer=None, dtype: type[np.unsignedinteger] = np.uint16) -> dict[str, int]:
    """Write one split's three files; returns its counts for `meta.json` (`write_meta` hashes
    the files once every split is written)."""
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    ends = np.cumsum(lengths)
    docs = np.stack([ends - lengths, ends], axis=1)
    flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64, count=int(lengths.sum()))
    if flat.size and flat.max() > np.iinfo(dtype).max:
        raise ValueError(f"token id {flat.max()} does not fit in {np.dtype(dtype).name}")
    masks = [loss_mask(np.asarray(ids), loss_on, tokenizer) for ids in encoded]
    mask = np.concatenate(masks) if masks else np.zeros(0, np.uint8)
    flat.astype(dtype).tofile(folder / f"{split}.tokens.bin")
    mask.astype(np.uint8).tofile(folder / f"{split}.mask.bin")
    np.save(folder / f"{split}.docs.npy", docs)
    return {"documents": len(encoded), "tokens": int(flat.size), "target_tokens": int(mask.sum()),
            "max_document_tokens": int(lengths.max()) if len(lengths) else 0}


def write_meta(folder: str | Path, vocab_size: int, dtype: np.dtype, loss_on: str,
               splits: dict[str, dict[str, int]]) -> dict:
    """Write `meta.json` for splits already written by `write_split`, hashing their files."""
    folder = Path(folder)
    hashes = {name: file_sha256(folder / name) for split in splits for name in split_files(split)}
    meta = {"vocab_size": vocab_size, "dtype": np.dtype(dtype).name, "loss_on": loss_on,
            "splits": splits, "sha256": hashes}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def tokenize_documents(texts: list[str], tokenizer, out_dir: str | Path, val_fraction: float,
                       loss_on: str, seed: int) -> dict[str, dict[str, int]]:
    """Encode documents, split them and write both splits plus `meta.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    train_idx, val_idx = split_documents(len(encoded), val_fraction, seed)
    dtype = token_dtype(len(tokenizer))
    stats = {
        "train": write_split(out, "train", [encoded[i] for i in train_idx], loss_on, tokenizer, dtype),
        "val": write_split(out, "val", [encoded[i] for i in val_idx], loss_on, tokenizer, dtype),
    }
    write_meta(out, len(tokenizer), dtype, loss_on, stats)
    return stats
