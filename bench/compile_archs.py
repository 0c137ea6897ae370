"""Benchmark: does `torch.compile` pay for itself on each architecture's training step? (issue 19)

For each arch, in its own process with an empty inductor cache (a cold compile, as a fresh
machine pays it): the model at bench/archs.py's equal-parameter width, lmpipe's optimizer and
objective on one random batch, then
1. eager: `--warmup` untimed steps, then `--steps` timed steps;
2. compiled: the same model wrapped in `torch.compile` (as lmpipe/train/loop.py wraps it), its
   first step timed alone (the cold compile), then `--warmup` untimed and `--steps` timed steps;
3. the loss of one fixed batch from the eager and the compiled model before any compiled step
   (the two must agree: a compile that changes the numbers is not a speed-up).
It prints per arch: eager and compiled ms/step (medians), their ratio, the first compiled step's
seconds and how many compiled steps repay it, and the loss gap. Nothing is typed in: every figure
is from this run, side by side in the same process.

    .venv/bin/python bench/compile_archs.py [--archs llama,mamba2,hawk] [--threads 2]
        [--batch 16 --length 128 --steps 10] [--out compile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def one_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """The measurements of one arch, in this process (the `--child` body)."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from archs import sized

    from lmpipe.data.batching import Batch
    from lmpipe.data.tokenizer import VOCAB_SIZE
    from lmpipe.model.build import build_model, count_parameters
    from lmpipe.model.mamba import parallel_scans
    from lmpipe.train.losses import cross_entropy_objective
    from lmpipe.train.optim import build_optimizer
    from lmpipe.train.params import TrainParams

    torch.set_num_threads(args.threads)
    params = sized(arch, args.params, args.layers, args.length)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB_SIZE, (args.batch, args.length), generator=gen)
    batch = Batch(input_ids=ids, target_mask=torch.ones(args.batch, args.length - 1),
                  positions=torch.arange(args.batch * args.length).view(args.batch, args.length))
    targets = batch.target_mask.sum()
    tp = TrainParams()
    model = build_model(params, seed=0).train()
    parallel_scans(model)
    compiled = torch.compile(model)
    with torch.no_grad():
        eager_loss = (cross_entropy_objective(model, batch)[0] / targets).item()

    def stepper(forward: torch.nn.Module) -> Any:
        optimizer = build_optimizer(model, tp)

        def step() -> float:
            start = time.perf_counter()
            loss_sum, _ = cross_entropy_objective(forward, batch)
            (loss_sum / targets).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start
        return step

    step = stepper(model)
    for _ in range(args.warmup):
        step()
    eager = [step() for _ in range(args.steps)]
    # the compiled model shares the eager one's (now trained) weights: compare their losses on
    # the same weights before the compiled side takes a step
    with torch.no_grad():
        eager_now = (cross_entropy_objective(model, batch)[0] / targets).item()
        compiled_now = (cross_entropy_objective(compiled, batch)[0] / targets).item()
    step = stepper(compiled)
    first = step()
    for _ in range(args.warmup):
        step()
    timed = [step() for _ in range(args.steps)]
    return {"arch": arch, "d_model": params.d_model, "parameters": count_parameters(model),
            "initial_loss": eager_loss, "eager_ms": 1e3 * statistics.median(eager),
            "compiled_ms": 1e3 * statistics.median(timed), "first_compiled_s": first,
            "loss_gap": abs(eager_now - compiled_now)}


def run_child(arch: str, argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One arch in a fresh process with an empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="lmpipe-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "--child", arch, *argv], env=env,
                             capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"arch": arch, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [(f"`bench/compile_archs.py`, {args.threads} torch thread(s), batch {args.batch} x "
             f"{args.length} tokens, ~{args.params:,} parameters, {args.layers} layers; medians "
             f"of {args.steps} steps after {args.warmup} warm-up steps; a cold inductor cache per "
             "arch:"), "",
             ("| arch | d_model | eager ms/step | compiled ms/step | compiled / eager speed | "
             "first compiled step (s) | steps to repay it | loss gap |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | failed: {' '.join(r['error'])} |||||||")
            continue
        saved = r["eager_ms"] - r["compiled_ms"]
        repay = f"{1e3 * r['first_compiled_s'] / saved:,.0f}" if saved > 0 else "never"
        lines.append(f"| {r['arch']} | {r['d_model']} | {r['eager_ms']:.1f} | "
                     f"{r['compiled_ms']:.1f} | {r['eager_ms'] / r['compiled_ms']:.2f}x | "
                     f"{r['first_compiled_s']:.0f} | {repay} | {r['loss_gap']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="llama,mamba2,hawk")
    parser.add_argument("--params", type=int, default=150_000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        print(json.dumps(one_arch(args.child, args)))
        return
    passthrough = [a for a in sys.argv[1:] if not a.startswith("--out")]
    if args.out:
        passthrough = [a for a in passthrough if a != str(args.out)]
    rows = []
    for arch in args.archs.split(","):
        start = time.perf_counter()
        rows.append(run_child(arch, passthrough, args))
        print(f"{arch}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(table(rows, args))
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
