"""Helpers for tests that build run folders by hand (synthetic stores for the reports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(path: Path, payload: Any) -> None:
    """A JSON file, or a JSONL file when `payload` is a list of records; parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in payload))
    else:
        path.write_text(json.dumps(payload))
