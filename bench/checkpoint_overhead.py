"""Checkpoint overhead at the default interval: what a kill -9 protection costs in training time.

Trains the default teacher configuration (params.yaml's `teacher` section: d=64, 2 layers, batches
of 32 dialogs of the default people world) for 300 steps with `checkpoint_every` at its default,
timing every checkpoint write, and prints

- the median time of one checkpoint write and the median training step time, and the overhead
  they imply: write / (interval x step);
- the wall time of whole runs with checkpoints at the default interval and without (only at the
  end), alternating A/B in the same process, 2 pairs, and their ratio with its range.

    .venv/bin/python bench/checkpoint_overhead.py [--steps 300] [--pairs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpipe.core.run_folder import RunLog  # noqa: E402
from lmpipe.data.tokenizer import build_byte_tokenizer  # noqa: E402
from lmpipe.data.tokens import TokenSplit, tokenize_world  # noqa: E402
from lmpipe.data.world import write_world  # noqa: E402
from lmpipe.model.build import build_model  # noqa: E402
from lmpipe.params.config import Params  # noqa: E402
from lmpipe.train.params import TrainParams
from lmpipe.train.loop import Trainer  # noqa: E402
from lmpipe.train.losses import cross_entropy_objective  # noqa: E402


def default_data(work: Path, params: Params) -> Path:
    write_world(params.world, work / "world")
    tokenize_world(work / "world", build_byte_tokenizer(), work / "tokens",
                   params.tokenize.val_fraction, params.tokenize.loss_on, params.tokenize.seed)
    return work / "tokens"


def one_run(tokens: Path, params: Params, tp: TrainParams, folder: Path) -> dict:
    """Train; return wall time, the step times the run logged and each checkpoint write's time."""
    model = build_model(params.teacher.model, tp.seed, build_byte_tokenizer())
    writes: list[float] = []
    with RunLog(folder, "train", "bench", {}) as run:
        trainer = Trainer(model, TokenSplit.open(tokens, "train"), TokenSplit.open(tokens, "val"),
                          tp, run, build_byte_tokenizer().pad_token_id, cross_entropy_objective,
                          run_params=tp.model_dump(mode="json"), folder=folder)
        save = trainer.save

        def timed_save() -> None:
            started = time.perf_counter()
            save()
            writes.append(time.perf_counter() - started)

        trainer.save = timed_save
        started = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - started
    steps = [json.loads(line)["step_time_s"] for line in (folder / "metrics.jsonl").open()
             if "step_time_s" in line]
    return {"wall": wall, "step_times": steps, "writes": writes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    base = params.teacher.train
    interval = base.checkpoint_every
    common = dict(steps=args.steps, eval_every=10 * args.steps, eval_people=0, threads=2,
                  keep_checkpoints=base.keep_checkpoints)
    with_checkpoints = base.model_copy(update=common)
    without = base.model_copy(update={**common, "checkpoint_every": 0})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokens = default_data(work, params)
        walls = {"interval": [], "end_only": []}
        writes: list[float] = []
        step_times: list[float] = []
        for pair in range(args.pairs):
            for label, tp in (("interval", with_checkpoints), ("end_only", without)):
                result = one_run(tokens, params, tp, work / f"run-{label}-{pair}")
                walls[label].append(result["wall"])
                if label == "interval":
                    writes += result["writes"]
                    step_times += result["step_times"]
    write_s, step_s = statistics.median(writes), statistics.median(step_times)
    ratios = [a / b for a, b in zip(walls["interval"], walls["end_only"])]
    print(f"default teacher, {args.steps} steps, checkpoint_every = {interval} "
          f"({len(writes)} writes timed)")
    print(f"checkpoint write: median {write_s * 1e3:.1f} ms; training step: median "
          f"{step_s * 1e3:.1f} ms")
    print(f"overhead from the write time: {100 * write_s / (interval * step_s):.2f}% of training "
          f"time (requirement: <= 3%)")
    print(f"whole runs, interval vs end only, {args.pairs} pairs: wall ratio "
          f"{statistics.mean(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
          f"{', '.join(f'{a:.1f}/{b:.1f} s' for a, b in zip(walls['interval'], walls['end_only']))}")


if __name__ == "__main__":
    main()
