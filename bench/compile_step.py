"""Benchmark: lmpipe's compiled training step beside nanoGPT's, interleaved in one process.

bench/train_throughput.py --compile times whole processes, alternating; on these machines its
pairs spread by ±15%, more than a few percent a change is worth. This times one optimizer step
of lmpipe's Trainer (`train_step`, as `train` runs it) with `train.compile`, in two forms, beside
nanoGPT's GPT compiled (imported from ../shared/anchors/nanoGPT, its loss inside its model, its
AdamW), all at nanoGPT's CPU Shakespeare configuration (4 layers, 4 heads, 128 dims, block 64,
batch 12, grad clip 1.0), interleaved repeats after a warm-up that compiles:

- `lmpipe`: the plain cross-entropy objective compiled with the model's forward, one graph from
  token ids to loss (what `train.compile` does on one process);
- `lmpipe-forward-only`: the same objective behind a wrapper that does not declare
  `compiles_with_model`, so only the model is compiled and the loss runs eagerly on its logits
  (what `train.compile` did before, and still does under DDP and for distillation objectives).

lmpipe's windows are drawn from the first 100,000 characters of tiny Shakespeare (its char
tokenizer); nanoGPT steps on one fixed random batch. No figure is typed in.

    .venv/bin/python bench/compile_step.py [--repeats 9 --steps 30 --threads 2 --write-readme]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT.parent / "shared" / "anchors" / "nanoGPT"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
README = ROOT / "bench" / "README.md"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import report
from train_profile import speed_table

BATCH, BLOCK = 12, 64


def lmpipe_steppers(threads: int) -> dict[str, Callable[[int], None]]:
    """The two compiled forms of lmpipe's Trainer step, each on a fresh model."""
    from lmpipe.core import profiler
    from lmpipe.data.tokenizer_kinds import build_tokenizer
    from lmpipe.data.tokens import TokenSplit, write_meta, write_split
    from lmpipe.model.build import build_model
    from lmpipe.model.params import ModelParams
    from lmpipe.train.loop import Trainer
    from lmpipe.train.losses import cross_entropy_objective
    from lmpipe.train.params import TrainParams

    text = DATA.read_text(encoding="utf-8")[:100_000]
    tokenizer = build_tokenizer("char", [text])
    work = Path(tempfile.mkdtemp(prefix="lmpipe-compile-step-"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    splits = {"train": write_split(work, "train", [ids], "all"),
              "val": write_split(work, "val", [ids[:5_000]], "all")}
    write_meta(work, len(tokenizer), np.uint16, "all", splits)
    tp = TrainParams(steps=10_000, batch_size=BATCH, lr=1e-3, warmup_steps=100, beta2=0.99,
                     weight_decay=0.1, grad_clip=1.0, sampling="windows", block_size=BLOCK,
                     loss_on="all", compile=True, threads=threads, seed=1337)

    def forward_only(model: torch.nn.Module, batch) -> tuple:
        return cross_entropy_objective(model, batch)  # no `compiles_with_model`: loss eager

    def stepper(objective) -> Callable[[int], None]:
        model = build_model(ModelParams(d_model=128, n_layers=4, n_heads=4, d_ff=344,
                                        max_seq_len=BLOCK + 1), seed=1337, tokenizer=tokenizer)
        trainer = Trainer(model, TokenSplit.open(work, "train"), TokenSplit.open(work, "val"), tp,
                          None, tokenizer.pad_token_id, objective=objective)
        trainer.timer = profiler.PhaseTimer()  # fit() makes it; train_step only records into it
        return trainer.train_step

    return {"lmpipe": stepper(cross_entropy_objective),
            "lmpipe-forward-only": stepper(forward_only)}


def nanogpt_stepper() -> Callable[[int], None]:
    """nanoGPT's GPT compiled, its loss inside the model, its AdamW, one fixed batch."""
    if not (ANCHOR / "model.py").is_file():
        raise SystemExit(f"{ANCHOR}: nanoGPT not found (../shared/anchors/nanoGPT beside the "
                         "project)")
    sys.path.insert(0, str(ANCHOR))
    from model import GPT, GPTConfig  # nanoGPT's model.py, from the anchor folder

    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=65, n_layer=4, n_head=4, n_embd=128,
                          dropout=0.0, bias=False))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    compiled = torch.compile(model)
    data = torch.randint(0, 65, (BATCH, BLOCK + 1))
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step(_: int) -> None:
        _, loss = compiled(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true", help="the bench/README.md block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sides = {"nanoGPT (compiled)": nanogpt_stepper(), **lmpipe_steppers(args.threads)}
    for step in sides.values():  # compiles (inductor's cache may make it quick)
        for i in range(5):
            step(i)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(args.repeats):  # interleaved, so drift hits every side alike
        for name, step in sides.items():
            first = 100 + repeat * args.steps
            start = time.perf_counter()
            for i in range(first, first + args.steps):
                step(i)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    ms = {name: statistics.median(v) for name, v in times.items()}
    fastest = {name: min(v) for name, v in times.items()}
    lines = speed_table("compile_step.py", f"{args.threads} torch threads, torch.compile",
                        args.repeats, args.steps, times, "nanoGPT (compiled)")
    gain = ms["lmpipe-forward-only"] / ms["lmpipe"]
    lines += ["", (f"Compiling the loss with the forward: {gain:.2f}x the forward-only step "
                   f"(fastest repeats {fastest['lmpipe-forward-only'] / fastest['lmpipe']:.2f}x).")]
    report(lines, README, "compile-step", args.write_readme)


if __name__ == "__main__":
    main()
