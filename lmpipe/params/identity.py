"""What a training run is a function of: its parameters, the content of its inputs, its code.

A checkpoint resumes a run only when the identity it was written under equals the identity of
the run about to start (lmpipe/train/checkpoint.py compares their fingerprints); anything else
starts from step 0. The identity holds the stage's resolved section, a content hash of every input
the run reads (token arrays through their meta.json, which records each array's sha256; the
tokenizer by what defines it, not its transient state; the world description; a model it starts
from or learns from) and a hash of the lmpipe source plus the stage scripts, so an edit to the
training code never resumes a checkpoint the old code wrote.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import lmpipe
from lmpipe.core.artifacts import file_sha256, tokenizer_identity

PACKAGE = Path(lmpipe.__file__).resolve().parent
STAGES = PACKAGE.parent / "stages"


@lru_cache(maxsize=1)
def code_identity() -> str:
    """sha256 over every Python file of the lmpipe package and the stage scripts (relative path
    and bytes), in a fixed order."""
    digest = hashlib.sha256()
    files = sorted(PACKAGE.rglob("*.py")) + (sorted(STAGES.glob("*.py")) if STAGES.is_dir() else [])
    for path in files:
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(PACKAGE.parent)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def model_identity(model_dir: str | Path) -> dict[str, str]:
    """A saved model directory by its weights, config and tokenizer."""
    model_dir = Path(model_dir)
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights or not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json / "
                                "*.safetensors)")
    identity = {p.name: file_sha256(p) for p in weights}
    identity["config.json"] = file_sha256(model_dir / "config.json")
    if (model_dir / "tokenizer.json").is_file():
        identity["tokenizer"] = tokenizer_identity(model_dir)
    return identity


def data_identity(tokens_dir: str | Path, tokenizer_dir: str | Path,
                  world_dir: str | Path | None = None) -> dict[str, Any]:
    """The token arrays (meta.json carries each array's sha256, checked when a split is opened),
    the tokenizer, and the world's description when the run asks questions of it."""
    identity: dict[str, Any] = {
        "tokens_meta": file_sha256(Path(tokens_dir) / "meta.json"),
        "tokenizer": tokenizer_identity(tokenizer_dir),
    }
    if world_dir is not None and (Path(world_dir) / "world.json").is_file():
        identity["world"] = file_sha256(Path(world_dir) / "world.json")
    return identity


def run_identity(section: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The whole identity of a run: what is hashed into its checkpoints' fingerprint."""
    return {"params": section, "inputs": inputs, "code": code_identity(),
            "lmpipe_version": lmpipe.__version__}
