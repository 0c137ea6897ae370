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


def report(lines: list[str], path: Path, name: str, write: bool) -> None:
    """Print a bench's Markdown lines and, with `write`, put them into block `name` of `path`."""
    text = "\n".join(lines)
    print(text)
    if write:
        write_block(path, name, text)


def upsert_row(path: Path, name: str, header: str, row: list[str]) -> None:
    """Put `row` (its cells) into the Markdown table of block `name` in `path`, replacing the row
    whose first cell is the same (one run of a bench updates its own row), else appending it;
    `header` (the table's header and rule lines) starts a block that holds no table yet."""
    start, end = markers(name)
    text = path.read_text(encoding="utf-8")
    match = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, re.DOTALL)
    if match is None:
        raise SystemExit(f"{path}: expected one {start} ... {end} block")
    lines = [line for line in match.group(1).splitlines() if line.startswith("|")] or \
        header.splitlines()
    cells = "| " + " | ".join(row) + " |"
    key = f"| {row[0]} |"
    for i, line in enumerate(lines):
        if line.startswith(key):
            lines[i] = cells
            break
    else:
        lines.append(cells)
    write_block(path, name, "\n".join(lines))
