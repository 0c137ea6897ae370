"""Benchmark: lmpipe's training loop on nanoGPT's CPU Shakespeare configuration.

4 layers, 4 heads, 128 dims, block 64, batch 12, byte vocabulary, lr 1e-3 (warmup 100, cosine
to 1e-4 at 2000), AdamW beta2 0.99, weight decay 0.1, 2000 iterations, on tiny-shakespeare split
90/10 as nanoGPT does. Prints tokens/s, ms/step and the validation loss at the end, beside the
nanoGPT reference measured on this machine (issue #3: >= 1.1x its tokens/s, val loss within 2%).

usage: .venv/bin/python bench/train_throughput.py [--data PATH] [--steps N] [--threads N]
                                                   [--compile] [--d-ff N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpipe.core.run_folder import RunLog  # noqa: E402
from lmpipe.data.tokenizer import VOCAB_SIZE, special_id  # noqa: E402
from lmpipe.data.tokens import TokenSplit, write_meta, write_split  # noqa: E402
from lmpipe.model.build import build_model, count_parameters  # noqa: E402
from lmpipe.model.params import ModelParams  # noqa: E402
from lmpipe.train.params import TrainParams
from lmpipe.train.loop import train  # noqa: E402

NANOGPT = {"val_loss": 1.886, "ms_per_step_2_threads": 46.6, "tokens_per_s_2_threads": 16_500,
           "ms_per_step_1_thread": 66.0, "tokens_per_s_1_thread": 11_600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--d-ff", type=int, default=344, help="SwiGLU width (8/3 * 128 ~ GPT MLP)")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(f"{data}: tiny-shakespeare text not found (pass --data PATH)")
    raw = np.frombuffer(data.read_bytes(), dtype=np.uint8).astype(np.int64).tolist()
    cut = int(0.9 * len(raw))
    work = Path(tempfile.mkdtemp(prefix="lmpipe-throughput-"))
    splits = {"train": write_split(work, "train", [raw[:cut]], "all"),
              "val": write_split(work, "val", [raw[cut:]], "all")}
    write_meta(work, VOCAB_SIZE, np.uint16, "all", splits)
    tp = TrainParams(steps=args.steps, batch_size=12, lr=1e-3, min_lr_ratio=0.1, warmup_steps=100,
                     beta2=0.99, weight_decay=0.1, grad_clip=1.0, sampling="windows",
                     block_size=64, loss_on="all", log_every=100, eval_every=args.steps,
                     threads=args.threads, compile=args.compile, seed=1337)
    model = build_model(ModelParams(d_model=128, n_layers=4, n_heads=4, d_ff=args.d_ff,
                                    max_seq_len=65), seed=1337)
    with RunLog(work / "run", "bench", "throughput", {"train": tp.model_dump()}) as run:
        t0 = time.perf_counter()
        summary = train(model, TokenSplit.open(work, "train"), TokenSplit.open(work, "val"), tp,
                        run, special_id("<|pad|>"), desc="throughput")
        wall = time.perf_counter() - t0
        run.finish(**summary)
    records = [json.loads(line) for line in (work / "run/metrics.jsonl").open()]
    steady = [r for r in records if "tokens_per_s" in r][1:]  # skip the first (warm-up) window
    tokens_per_s = float(np.median([r["tokens_per_s"] for r in steady]))
    ms = float(np.median([r["step_time_s"] for r in steady])) * 1000
    mfu = float(np.median([r["mfu"] for r in steady]))
    ref = NANOGPT[f"tokens_per_s_{args.threads}_thread{'s' if args.threads > 1 else ''}"] \
        if args.threads in (1, 2) else float("nan")
    print(f"params {count_parameters(model):,}  threads {args.threads}  compile {args.compile}")
    print(f"tokens/s {tokens_per_s:,.0f}  ms/step {ms:.1f}  MFU {mfu:.3f}  wall {wall:.0f} s")
    print(f"val loss at {args.steps} steps: {summary['final_val_loss']:.4f}  "
          f"(nanoGPT {NANOGPT['val_loss']}, ratio {summary['final_val_loss'] / NANOGPT['val_loss']:.3f})")
    print(f"speed vs nanoGPT train.py on {args.threads} thread(s): {tokens_per_s / ref:.2f}x")


if __name__ == "__main__":
    main()
