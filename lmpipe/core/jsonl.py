"""JSON Lines logs that are read while they are written: the one tolerant reader and the one
appender of run folders' `metrics.jsonl`, `evals.jsonl`, `probes.jsonl`, `linear_probes.jsonl`
and `checkpoint_evals.jsonl`.

A reader may meet a line a writer has not finished, a line cut short by a kill, or bytes that are
not UTF-8; it skips such lines and counts them, and never fails on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of `path`, one per line, and how many lines were skipped: not UTF-8, not
    JSON (torn or cut short) or not an object. Blank lines are neither; a missing file is empty."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[dict[str, Any]] = []
    skipped = 0
    for raw in data.split(b"\n"):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if not line or line.isspace():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            skipped += 1
            continue
        if type(record) is dict:
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def append_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append records with one `write` on an O_APPEND descriptor: concurrent writers (several
    eval threads) never interleave inside a line, and a reader sees a batch of records whole."""
    if not records:
        return
    data = "".join(json.dumps(r, default=float) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it whole; a short write is not an error
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
