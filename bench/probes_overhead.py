"""Bench: what probes cost in training throughput.

Three builds train the same model on the same batches (the default teacher, d=64, 2 blocks, batch
32, one torch thread), interleaved and repeated, median tokens/s of each:

- baseline: lmpipe as it was before probe support existed (the parent of the commit that added
  lmpipe/train/probes.py, checked out in a temporary git worktree);
- disabled: this build, `train.probes.enabled: false` (requirement: within 2% of baseline);
- every 10: this build, every probe point recorded every 10th step (requirement: <= 20% slower).

    .venv/bin/python bench/probes_overhead.py [--steps 200] [--repeats 3]
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

ROOT = Path(__file__).resolve().parents[1]
MODES = ("baseline", "disabled", "every 10")


def worker(mode: str, tokens: Path, steps: int) -> None:
    """One measurement in this process (lmpipe imported from PYTHONPATH); prints tokens/s."""
    import torch

    from lmpipe.core.run_folder import RunLog
    from lmpipe.data.tokens import TokenSplit
    from lmpipe.model.build import build_model
    from lmpipe.model.params import ModelParams
    from lmpipe.train.params import TrainParams
    from lmpipe.train.loop import train

    torch.set_num_threads(1)
    extra = {} if mode == "baseline" else {"probes": {"enabled": mode == "every 10", "every": 10}}
    tp = TrainParams.model_validate({"steps": steps, "batch_size": 32, "warmup_steps": 10,
                                     "log_every": steps, "eval_every": steps, "eval_batches": 1,
                                     **extra})
    model = build_model(ModelParams(d_model=64, n_layers=2, n_heads=2), seed=0)
    with tempfile.TemporaryDirectory() as folder, RunLog(folder, "train", mode, {}) as run:
        # wall clock of the whole run (everything a probe does, writing its lines included);
        # the initial and final evals are one batch each, the same in every build
        start = time.perf_counter()
        summary = train(model, TokenSplit.open(tokens, "train"), TokenSplit.open(tokens, "val"),
                        tp, run, 0)
        seconds = time.perf_counter() - start
    import lmpipe

    print(json.dumps({"mode": mode, "tokens_per_s": summary["tokens_seen"] / seconds,
                      "lmpipe": lmpipe.__file__}))


def make_tokens(out: Path) -> Path:
    from lmpipe.data.tokenizer import build_byte_tokenizer
    from lmpipe.data.tokens import tokenize_world
    from lmpipe.data.world import write_world
    from lmpipe.data.params import WorldParams

    write_world(WorldParams(people=400, heldout_people=50), out / "world")
    tokenize_world(out / "world", build_byte_tokenizer(), out / "tokens", val_fraction=0.05,
                   loss_on="assistant", seed=0)
    return out / "tokens"


def baseline_tree(tmp: Path) -> Path:
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--",
                            "lmpipe/train/probes.py"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()[-1]
    tree = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), f"{added}^"], cwd=ROOT,
                   check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=MODES)
    parser.add_argument("--tokens", type=Path)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.tokens, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens = make_tokens(tmp)
        tree = baseline_tree(tmp)
        try:
            results: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.repeats):
                for mode in MODES:
                    path = tree if mode == "baseline" else ROOT
                    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
                    out = subprocess.run([sys.executable, __file__, "--worker", mode, "--tokens",
                                          str(tokens), "--steps", str(args.steps)], env=env,
                                         capture_output=True, text=True, check=True, cwd=path)
                    measured = json.loads(out.stdout.strip().splitlines()[-1])
                    assert measured["lmpipe"].startswith(str(path)), measured  # the right build
                    results[mode].append(measured["tokens_per_s"])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    median = {m: statistics.median(v) for m, v in results.items()}
    base = median["baseline"]
    for mode in MODES:
        runs = ", ".join(f"{v:,.0f}" for v in results[mode])
        print(f"{mode:>9}: {median[mode]:,.0f} tokens/s median ({runs}); "
              f"{100 * (median[mode] / base - 1):+.1f}% vs baseline")
    disabled = median["disabled"] / base - 1
    enabled = median["every 10"] / base - 1
    print(f"probes disabled: {100 * disabled:+.1f}% (requirement: within 2%) "
          f"{'PASS' if abs(disabled) <= 0.02 else 'FAIL'}")
    print(f"probes every 10th step: {100 * enabled:+.1f}% (requirement: at most 20% slower) "
          f"{'PASS' if enabled >= -0.20 else 'FAIL'}")


if __name__ == "__main__":
    main()
