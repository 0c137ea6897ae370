"""Write a benchmark's figures into a marked block of a Markdown file, so README tables come from
a bench's output and never from typing: the block lies between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->`."""

from __future__ import annotations

import re
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of block `name`."""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_block(path: Path, name: str, block: str) -> None:
    """Replace what lies between the markers of block `name` in `path` with `block`; refuse when
    the file does not hold exactly one such block."""
    start, end = markers(name)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{path}: expected one {start} ... {end} block")
    path.write_text(pattern.sub(lambda _: f"{start}\n{block}\n{end}", text), encoding="utf-8")
    print(f"wrote the figures into {path}")
