"""Packed token arrays: the `tokenize` stage's output and every trainer's input.

A split is three files: `<split>.tokens.bin` (token ids: uint16 when the vocabulary fits, else
uint32, as `meta.json` records), `<split>.mask.bin` (1 where a token is a training target, uint8)
and `<split>.docs.npy` (one `[start, end)` row per document), all memory-mapped when read.
Documents stay whole so a batch never starts mid-dialog.

`meta.json` records the vocabulary size, the id dtype, the loss rule, per split its counts
(documents, tokens, target tokens, the longest document in tokens), how the split was made
(`split`: by document or by people) and the sha256 of every file; `TokenSplit.open` checks a
split's files against those hashes, so a corrupted array is refused with the file named instead
of being trained on.

Two ways to split (issue 15). Plain corpora (shakespeare, corpus) are split per document, seeded,
`val_fraction` of them to validation. The people world arrives already split by `prepare`
(lmpipe/data/world.py): each document carries `split` ("train" or "val") and the `facts` it states,
every document about a trained person is a training document and validation documents are about
people who are never trained. A per-document split would be wrong there: each fact has one Q&A
(or tool) dialog, so a dialog drawn into validation is a fact the evaluator asks but the model
never saw. `world_split` keeps every training document, takes the validation documents of
max(1, round(val_fraction x trained people)) validation people (seeded), and
`check_trained_facts` refuses the result unless every trained person's every attribute value is
stated by one of their training documents and no validation document is about a trained person.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmpipe.core import protocol
from lmpipe.data.tokenizer import loss_mask
from lmpipe.data.tokenizer_kinds import token_dtype
from lmpipe.core.artifacts import ArtifactError, file_sha256, verify_sha256

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


def read_documents(world_dir: str | Path) -> list[dict]:
    """`prepare`'s documents: `documents.jsonl`, then `validation.jsonl` when the world wrote one
    (the people world: every row then carries its `split`)."""
    folder = Path(world_dir)
    source = folder / "documents.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: missing input (run the prepare stage first)")
    rows = [json.loads(line) for line in source.open(encoding="utf-8")]
    held = folder / "validation.jsonl"
    if held.is_file():
        rows += [json.loads(line) for line in held.open(encoding="utf-8")]
    return rows


def check_trained_facts(documents: list[dict], trained_people: int | None = None) -> None:
    """Refuse a split that loses trained facts (documents that carry `split` and `facts`).

    Trained people are the people named by a training document that states facts. Each must
    have every attribute of `protocol.ATTRIBUTES` stated (value in the text) by a training
    document about them, and no validation document may be about one of them. With
    `trained_people` (world.json's count), exactly that many people must be trained."""
    stated: dict[str, set[str]] = {}
    for doc in documents:
        if doc.get("facts") and doc["split"] == "train":
            stated.setdefault(doc["name"], set()).update(
                a for a, v in doc["facts"].items() if v in doc["text"])
    problems = [f"validation {d.get('kind', 'document')} about trained person {d['name']}"
                for d in documents if d["split"] != "train" and d.get("name") in stated]
    problems += [f"{name}'s {a} is in no training document"
                 for name, attributes in stated.items()
                 for a in protocol.ATTRIBUTES if a not in attributes]
    if trained_people is not None and len(stated) != trained_people:
        problems.insert(0, f"world.json counts {trained_people} trained people but training "
                           f"documents state the facts of {len(stated)}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("the split loses trained facts: " + "; ".join(problems[:5]) + more
                         + "; rebuild the world: dvc repro -f prepare")


def world_split(documents: list[dict], val_fraction: float, seed: int,
                trained_people: int | None = None) -> tuple[list[dict], int]:
    """The documents to tokenize for a world that marks each document's `split`: every training
    document, and the validation documents of n = max(1, round(val_fraction x trained people))
    validation people (fewer if the world has fewer), drawn with `seed`. Returns them, in their
    order, with n; checked with `check_trained_facts`."""
    if any(d.get("split") not in ("train", "val") for d in documents):
        bad = next(d.get("split") for d in documents if d.get("split") not in ("train", "val"))
        raise ValueError(f"document split {bad!r}: expected 'train' or 'val'")
    trained = {d["name"] for d in documents if d["split"] == "train" and "name" in d}
    candidates = sorted({d["name"] for d in documents if d["split"] == "val"})
    if not candidates:
        raise ValueError("the world has no validation documents; rebuild it: dvc repro -f prepare")
    wanted = max(1, round(val_fraction * len(trained)))
    chosen = set(random.Random(seed).sample(candidates, min(wanted, len(candidates))))
    kept = [d for d in documents if d["split"] == "train" or d["name"] in chosen]
    check_trained_facts(kept, trained_people)
    return kept, len(chosen)


def world_documents(world_dir: str | Path, val_fraction: float,
                    seed: int) -> tuple[list[dict], list[str] | None, dict | None]:
    """What `tokenize` encodes from `prepare`'s folder: the documents, each one's split and the
    split rule for `meta.json`. A world whose documents carry their `split` (the people world) is
    split by people (`world_split`, with world.json's trained count); a plain corpus returns no
    splits, for `tokenize_documents`' seeded per-document split."""
    folder = Path(world_dir)
    docs = read_documents(folder)
    if not all("split" in d for d in docs):
        return docs, None, None
    info = folder / "world.json"
    trained = json.loads(info.read_text()).get("people") if info.is_file() else None
    docs, n_val = world_split(docs, val_fraction, seed, trained)
    rule = {"by": "people", "validation_people": n_val, "val_fraction": val_fraction,
            "seed": seed}
    return docs, [d["split"] for d in docs], rule


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of document indices into (train, val); val holds at least one document.
    For plain corpora only: see the module docstring for why the people world is not split so."""
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
               splits: dict[str, dict[str, int]], split_rule: dict | None = None) -> dict:
    """Write `meta.json` for splits already written by `write_split`, hashing their files;
    `split_rule` says how the documents were split."""
    folder = Path(folder)
    hashes = {name: file_sha256(folder / name) for split in splits for name in split_files(split)}
    meta = {"vocab_size": vocab_size, "dtype": np.dtype(dtype).name, "loss_on": loss_on,
            "splits": splits, "sha256": hashes}
    if split_rule is not None:
        meta["split"] = split_rule
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def tokenize_documents(texts: list[str], tokenizer, out_dir: str | Path, val_fraction: float,
                       loss_on: str, seed: int, splits: list[str] | None = None,
                       split_rule: dict | None = None) -> dict[str, dict[str, int]]:
    """Encode documents, split them and write both splits plus `meta.json`.

    `splits`: each document's split ("train" or "val"), as `world_split` chose it; without it,
    the seeded per-document split of plain corpora (`val_fraction`, `seed`). `split_rule` is
    recorded in `meta.json` (default: the rule that was applied)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoded = tokenizer(texts)["input_ids"]  # each document gets its BOS from the tokenizer
    if splits is None:
        train_idx, val_idx = split_documents(len(encoded), val_fraction, seed)
        split_rule = split_rule or {"by": "document", "val_fraction": val_fraction, "seed": seed}
    else:
        if len(splits) != len(texts) or not set(splits) <= {"train", "val"}:
            raise ValueError("splits: expected one 'train' or 'val' per document")
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        val_idx = [i for i, s in enumerate(splits) if s == "val"]
        if not train_idx or not val_idx:
            raise ValueError("splits: expected at least one training and one validation document")
        split_rule = split_rule or {"by": "given"}
    dtype = token_dtype(len(tokenizer))
    stats = {
        "train": write_split(out, "train", [encoded[i] for i in train_idx], loss_on, tokenizer, dtype),
        "val": write_split(out, "val", [encoded[i] for i in val_idx], loss_on, tokenizer, dtype),
    }
    write_meta(out, len(tokenizer), dtype, loss_on, stats, split_rule)
    return stats


def tokenize_world(world_dir: str | Path, tokenizer, out_dir: str | Path, val_fraction: float,
                   loss_on: str, seed: int) -> dict[str, dict[str, int]]:
    """Tokenize `prepare`'s folder exactly as the `tokenize` stage does (split by people for the
    people world, per document for a plain corpus), for tests and benchmarks that build their
    own data."""
    docs, splits, rule = world_documents(world_dir, val_fraction, seed)
    return tokenize_documents([d["text"] for d in docs], tokenizer, out_dir, val_fraction,
                              loss_on, seed, splits=splits, split_rule=rule)
