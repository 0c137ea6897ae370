"""Benchmark: tokenizer encoding throughput on tiny-shakespeare, byte vs trained byte-level BPE.

Trains a BPE tokenizer (vocab 4096 by default) on the text first and reports the training time
separately, then encodes the whole text with each tokenizer through the fast tokenizer's batch
encode (the text cut into chunks of whole lines) and prints bytes/s, tokens and bytes per token.
Requirement (issue #4): BPE encoding at least 5 MB/s on 2 cores.

usage: .venv/bin/python bench/tokenize_throughput.py [--data PATH] [--vocab-size N]
                                                     [--chunk-bytes N] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpipe.data.tokenizer_kinds import build_tokenizer  # noqa: E402


def chunks(text: str, chunk_bytes: int) -> list[str]:
    """The text cut after whole lines into pieces of about `chunk_bytes` characters."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chunk_bytes)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def encode_rate(tok, pieces: list[str], n_bytes: int, repeats: int) -> tuple[float, int]:
    best, n_tokens = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = tok(pieces, add_special_tokens=False)["input_ids"]
        best = min(best, time.perf_counter() - t0)
        n_tokens = sum(map(len, ids))
    return n_bytes / best, n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--chunk-bytes", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="best of N encodes")
    args = parser.parse_args()

    text = Path(args.data).read_text(encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    pieces = chunks(text, args.chunk_bytes)
    assert "".join(pieces) == text
    print(f"data: {args.data} ({n_bytes:,} bytes, {len(pieces)} chunks of ~{args.chunk_bytes:,}), "
          f"{os.cpu_count()} cpus, TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}")

    byte = build_tokenizer("byte")
    t0 = time.perf_counter()
    bpe = build_tokenizer("bpe", text.splitlines(keepends=True), vocab_size=args.vocab_size)
    train_s = time.perf_counter() - t0
    print(f"bpe training (vocab {len(bpe):,}): {train_s:.2f} s "
          f"({n_bytes / train_s / 1e6:.2f} MB/s of training text)")

    for name, tok in (("byte", byte), ("bpe", bpe)):
        rate, n_tokens = encode_rate(tok, pieces, n_bytes, args.repeats)
        check = tok.decode(tok(pieces[0], add_special_tokens=False)["input_ids"]) == pieces[0]
        print(f"{name:>4}: {rate / 1e6:6.2f} MB/s  {n_tokens:>9,} tokens  "
              f"{n_bytes / n_tokens:.2f} bytes/token  round trip {'ok' if check else 'FAILED'}")


if __name__ == "__main__":
    main()
