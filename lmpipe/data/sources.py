"""Text sources for the `prepare` stage: tiny Shakespeare and any local corpus.

Tiny Shakespeare comes from its public URL, checked against its sha256, or from a local copy given
in params (checked the same way); neither available is a clear error. A local corpus (plain text,
JSONL with a field, Parquet) goes through Hugging Face `datasets`, cached under the sha256 of its
content: loading the same files again reuses the cache and adds nothing to disk. Documents are
deduplicated here; the tokenize stage splits them train/val by a seeded rule. A Hugging Face hub
dataset name works as `data.path` when the user is online (HF_HUB_OFFLINE=0).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.request
from pathlib import Path

from lmpipe.core import protocol
from lmpipe.core.artifacts import file_sha256

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPUS_FORMATS = {"text": "text", "jsonl": "json", "parquet": "parquet"}


class SourceError(ValueError):
    """A data source that cannot be read: the message names the file or URL and what to do."""


def tiny_shakespeare(local_path: str | None, cache_dir: Path, url: str = SHAKESPEARE_URL,
                     timeout_s: float = 20.0) -> Path:
    """The verified tiny-shakespeare file: the local copy if given, else downloaded once."""
    if local_path:
        path = Path(local_path)
        if not path.is_file():
            raise SourceError(f"data.path = {local_path}: file not found")
        _check_sha(path, f"data.path = {local_path}")
        return path
    cached = Path(cache_dir) / "tinyshakespeare.txt"
    if cached.is_file() and file_sha256(cached) == SHAKESPEARE_SHA256:
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SourceError(f"could not download tiny Shakespeare from {url} ({exc}); set data.path "
                          "to a local copy of the file") from None
    _check_sha(partial, url)
    partial.replace(cached)
    return cached


def _check_sha(path: Path, what: str) -> None:
    actual = file_sha256(path)
    if actual != SHAKESPEARE_SHA256:
        raise SourceError(f"{what}: sha256 {actual} is not tiny Shakespeare's "
                          f"({SHAKESPEARE_SHA256})")


def load_corpus(path: str, fmt: str, cache_dir: Path, field: str = "text") -> list[str]:
    """Documents of a local corpus (`fmt`: text, jsonl or parquet), cached by content hash."""
    from datasets import load_dataset, load_from_disk

    if fmt not in CORPUS_FORMATS:
        raise SourceError(f"data.format = {fmt!r}: expected one of {sorted(CORPUS_FORMATS)}")
    source = Path(path)
    if not source.is_file():
        return _hub_corpus(path, field)
    key = hashlib.sha256(f"{fmt}\0{field}\0{file_sha256(source)}".encode()).hexdigest()[:24]
    cached = Path(cache_dir) / key
    if not cached.is_dir():
        # datasets' own cache lives in a scratch dir deleted right after: the only lasting copy
        # is ours, keyed by content, so a second load of the same files writes nothing.
        with tempfile.TemporaryDirectory(prefix="lmpipe-datasets-") as scratch:
            try:
                data = load_dataset(CORPUS_FORMATS[fmt], data_files=str(source), split="train",
                                    cache_dir=scratch)
            except Exception as exc:  # datasets raises many types; name the file either way
                raise SourceError(f"data.path = {path}: could not read as {fmt}: {exc}") from None
            if field not in data.column_names:
                raise SourceError(f"data.field = {field!r} not in {path} (fields: "
                                  f"{data.column_names})")
            data.select_columns([field]).save_to_disk(str(cached.with_suffix(".tmp")))
        cached.with_suffix(".tmp").replace(cached)
    texts = [t for t in load_from_disk(str(cached))[field] if isinstance(t, str) and t.strip()]
    if not texts:
        raise SourceError(f"data.path = {path}: the corpus has no non-empty {field!r} documents")
    return texts


def _hub_corpus(name: str, field: str) -> list[str]:
    """A hub dataset's train split, only when the user allowed network access."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "1") != "0" or "/" not in name:
        raise SourceError(f"data.path = {name}: file not found (a hub dataset name loads only "
                          "with HF_HUB_OFFLINE=0 and a network)")
    from datasets import load_dataset

    try:
        data = load_dataset(name, split="train")
    except Exception as exc:
        raise SourceError(f"data.path = {name}: could not load the hub dataset: {exc}") from None
    if field not in data.column_names:
        raise SourceError(f"data.field = {field!r} not in {name} (fields: {data.column_names})")
    return [t for t in data[field] if isinstance(t, str) and t.strip()]


def disk_usage(folder: Path) -> int:
    """Bytes under `folder` (for checking that caches do not grow)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def paragraphs(text: str) -> list[str]:
    """A plain text cut at blank lines (tiny Shakespeare: one document per speech)."""
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def write_text_documents(texts: list[str], out_dir: Path, describe: dict) -> dict[str, int]:
    """Write deduplicated plain-text documents as `documents.jsonl` (what `tokenize` reads)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(texts))
    with open(out / "documents.jsonl", "w", encoding="utf-8") as f:
        for text in unique:
            f.write(json.dumps({"kind": "text", "text": protocol.text_document(text)},
                               ensure_ascii=False) + "\n")
    stats = {"documents": len(unique), "duplicates_dropped": len(texts) - len(unique),
             "bytes": sum(len(t.encode()) for t in unique)}
    (out / "world.json").write_text(json.dumps({**describe, **stats}, indent=2) + "\n")
    return stats
