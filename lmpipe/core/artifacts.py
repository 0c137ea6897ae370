"""Content identity of artifacts: file hashes, their verification, and a tokenizer's identity.

Every artifact a stage writes records the sha256 of its files, and every reader checks them before
use, so a corrupted or hand-edited file is refused with a message naming it and saying how to
rebuild it, instead of training silently on garbage. A check is cached in-process by (path, size,
mtime), so opening the same artifact again costs nothing.

`tokenizer_identity` hashes what decides how a saved Hugging Face tokenizer maps text to ids (its
model, added tokens, normalizer, pre-tokenizer, post-processor, decoder and special-token roles)
and nothing transient (padding, truncation, padding side, model_max_length), so two saves of one
tokenizer compare equal whatever was done with it in between.

Standard library only: fast validation code imports this without torch or numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmpipe.core.section import ConfigError

# tokenizer.json sections that decide the text -> ids mapping (not "padding" or "truncation")
TOKENIZER_JSON_KEYS = ("model", "added_tokens", "normalizer", "pre_tokenizer", "post_processor",
                       "decoder")
# tokenizer_config.json keys that assign special-token roles (transformers 4 and 5 spellings)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token",
                      "mask_token", "additional_special_tokens", "extra_special_tokens")

# (resolved path, inode, size, mtime_ns, ctime_ns) -> the sha256 it was verified against
_verified: dict[tuple[str, int, int, int, int], str] = {}


class ArtifactError(ConfigError):
    """An artifact that cannot be used as is: the message names the file and how to rebuild it."""


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    # inode and ctime too: a file replaced by another, or touched back to its old mtime, misses
    stat = path.stat()
    return str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def verify_sha256(path: str | Path, expected: str, rebuild: str) -> None:
    """Raise ArtifactError unless `path`'s content hashes to `expected`; `rebuild` tells the
    reader what to do (e.g. "rebuild it: dvc repro -f tokenize")."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file is missing; {rebuild}")
    key = _stat_key(path)
    if _verified.get(key) == expected:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ArtifactError(f"{path}: content does not match its recorded sha256 (recorded "
                            f"{expected[:12]}…, found {actual[:12]}…); the file is corrupt or "
                            f"was modified: {rebuild}")
    _verified[key] = expected


def canonical_sha256(value: object) -> str:
    """The sha256 of a JSON value written canonically (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read the tokenizer file ({exc}); save the tokenizer "
                            "again (dvc repro -f tokenize)") from None


def tokenizer_identity(folder: str | Path) -> str:
    """A sha256 of what makes a saved tokenizer (`save_pretrained` folder) map text to ids:
    unchanged by padding, truncation or padding side, changed by any vocabulary, merge, added
    token or special-token assignment."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ArtifactError(f"{path}: no tokenizer.json; save the tokenizer again "
                            "(dvc repro -f tokenize)")
    core = _read_json(path)
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    identity = {"tokenizer.json": {key: core.get(key) for key in TOKENIZER_JSON_KEYS},
                "special_tokens": {key: config[key] for key in SPECIAL_TOKEN_KEYS
                                   if config.get(key) not in (None, [], {})}}
    return canonical_sha256(identity)


def clear_cache() -> None:
    """Forget every verified hash (a file rewritten within one timestamp tick keeps its key)."""
    _verified.clear()

