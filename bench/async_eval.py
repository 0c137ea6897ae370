"""Benchmark: training step time with and without checkpoint evals running beside it.

Trains the same small model twice on a generated people world (`python -m stages.train teacher`
in its own process, one torch thread): alone, then under flows/async_eval.py's
`train_with_async_eval`, whose Prefect watcher evaluates every checkpoint (validation loss, tool
accuracy on trained and held-out people) in this process, on the other core, while training goes
on. Prints the median (and mean) ms/step from each run's metrics.jsonl `step_time_s`, the
training wall time, how many evals ran while training was still running, and the step time of
the logged windows that overlapped an eval.

usage: .venv/bin/python bench/async_eval.py [--steps N] [--checkpoint-every N] [--people N]
                                            [--trained-people N] [--heldout-people N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from lmpipe.data.tokenizer import build_byte_tokenizer  # noqa: E402
from lmpipe.data.tokens import tokenize_world  # noqa: E402
from lmpipe.data.world import write_world  # noqa: E402
from lmpipe.data.params import WorldParams  # noqa: E402


def make_data(base: Path, people: int) -> None:
    """data/world and data/tokens (with tokenizer/) as the prepare and tokenize stages write them."""
    write_world(WorldParams(seed=0, people=people, heldout_people=max(1, people // 5)),
                base / "data" / "world")
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(base / "data" / "tokens" / "tokenizer")
    tokenize_world(base / "data" / "world", tokenizer, base / "data" / "tokens", val_fraction=0.05,
                   loss_on="assistant", seed=0)


def workspace(base: Path, name: str, params: dict) -> Path:
    work = base / name
    work.mkdir()
    (work / "data").symlink_to(base / "data")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def step_times(run: Path) -> list[tuple[int, float]]:
    """(step, s/step) of every logged window after the first (which holds the warm-up)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return [(r["step"], r["step_time_s"]) for r in records if "step_time_s" in r][1:]


def ms(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{1000 * statistics.median(values):.1f} (mean {1000 * statistics.fmean(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--trained-people", type=int, default=16)
    parser.add_argument("--heldout-people", type=int, default=16)
    parser.add_argument("--keep", default=None, help="keep the workspaces in DIR")
    args = parser.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lmpipe-async-eval-"))
    base.mkdir(parents=True, exist_ok=True)
    # Prefect reads its settings when first imported: a private home, set before that import
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.async_eval import train_with_async_eval

    make_data(base, args.people)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"]["train"].update(
        steps=args.steps, log_every=10, eval_every=args.steps, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=max(1, args.steps // args.checkpoint_every))
    model = params["teacher"]["model"]
    print(f"teacher d_model {model['d_model']}, {model['n_layers']} layers, batch "
          f"{params['teacher']['train']['batch_size']}, {args.steps} steps, a checkpoint every "
          f"{args.checkpoint_every}; {args.people} people; 1 torch thread for training, 1 for evals")

    alone = workspace(base, "alone", params)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.train", "teacher"], cwd=alone, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    alone_wall = time.perf_counter() - t0

    concurrent = workspace(base, "with_evals", params)
    t0 = time.perf_counter()
    result = train_with_async_eval("teacher", concurrent, poll_seconds=1.0,
                                   trained_people=args.trained_people,
                                   heldout_people=args.heldout_people, train_threads=1,
                                   eval_threads=1)
    with_wall = time.perf_counter() - t0

    rows = {}
    for label, work in (("alone", alone), ("with async evals", concurrent)):
        run = work / "runs" / "teacher"
        summary = json.loads((run / "summary.json").read_text())
        rows[label] = (step_times(run), summary["wall_time_s"], summary["final_val_loss"])
    evals = result["evals"]
    during = [e for e in evals if e["started_at"] < result["train_ended_at"]]
    # a logged window (step - log_every, step] overlapped an eval if the trainer logged it
    # between that eval's start and end
    overlapped = {s for s, _ in rows["with async evals"][0]
                  if any((e["train_step_at_start"] or 0) < s <= (e["train_step_at_end"] or 0)
                         for e in evals)}

    print("\n| run | ms/step median (mean) | training wall (s) | final val loss |")
    print("|---|---:|---:|---:|")
    for label, (times, wall, val) in rows.items():
        print(f"| {label} | {ms([t for _, t in times])} | {wall:.1f} | {val:.4f} |")
    with_times = rows["with async evals"][0]
    print(f"| with, windows during an eval | {ms([t for s, t in with_times if s in overlapped])} "
          f"| | |")
    print(f"| with, windows between evals | "
          f"{ms([t for s, t in with_times if s not in overlapped])} | | |")
    final = [o for o in result["outcomes"] if o["step"] == args.steps]
    print(f"\nevals: {len(evals)} (one per checkpoint), {len(during)} started while training "
          f"ran; eval seconds median {statistics.median(e['seconds'] for e in evals):.2f}; "
          f"{len(overlapped)}/{len(with_times)} logged windows overlapped an eval")
    if final:
        print("final checkpoint: " + ", ".join(f"{k} {v:.4f}" for k, v in final[0].items()
                                               if isinstance(v, float)))
    print(f"process wall: alone {alone_wall:.1f} s, with the watcher {with_wall:.1f} s (includes "
          "the Prefect server start-up and the evals after training ended)")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
