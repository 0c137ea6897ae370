"""The base of every params section and the error bad params raise.

Each package keeps its own section of params.yaml beside its code (lmpipe/data/params.py,
lmpipe/model/params.py, lmpipe/train/params.py, lmpipe/distill/params.py,
lmpipe/eval/params.py); lmpipe/params/config.py composes them into the whole `Params`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """Bad parameters: the message names the file, the key and what was expected."""


class Section(BaseModel):
    # strict: YAML already yields typed values, so "3" for an int is a mistake, not a conversion.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


SHORT = 60


def short(value: Any) -> str:
    """A value as it may appear in a one-line message: never a whole section or a long list (a
    string, often a path, is worth showing whole up to a few lines' length)."""
    limit = 200 if isinstance(value, str) else SHORT
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
