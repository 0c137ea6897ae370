"""Synthetic run folders for the store and report benchmarks: a realistic sweep plus the default runs.

`write_synthetic_runs(root, runs=1000, metric_rows=1_000_000, seed=0)` writes, under `root`:

- the default experiment's run folders `teacher`, `student` (stage train), `distill`, `quantize`
  and `eval` (evals of teacher / student / distilled / quantized), so the distillation and eval
  report sections have data;
- a sweep `sweeps/synth/` as the sweep runner writes it: `sweep.json` (axes, and every point's
  params, status, DVC experiment, attempts, wall time, error), and per point
  `sweeps/synth/pNNN/point.json` with a `teacher` run (stage train) and an `eval` run (stage eval,
  the teacher's recall, tool accuracy, knowledge bits ...). Axes: teacher.model.d_model ×
  world.people × mode (tool dialogs or Q&A dialogs) × teacher.train.seed, in that order, cut to
  the number of run folders asked for; the last point fails when the count is odd (its training
  run crashed: no summary, no eval run) and two more points are still pending (no folders).

Each run folder holds what `lmpipe/core/run_folder.py` writes: `params.json` (the resolved `Params`
plus the `run` section), `env.json`, `summary.json` and `metrics.jsonl` (empty for eval runs), and
`evals.jsonl` for eval runs. Training runs share the metric-row budget (one row per numeric field
per line, `step` excluded, the store's long format) so the total is exactly `metric_rows`.

    .venv/bin/python bench/synthetic_runs.py DIR [--runs N] [--metric-rows M]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpipe.params.config import Params  # noqa: E402

DEFAULT_RUNS = ("teacher", "student", "distill", "quantize", "eval")
SWEEP_ID = "synth"
AXES: dict[str, list[Any]] = {
    "teacher.model.d_model": [32, 48, 64, 96, 128],
    "world.people": [25, 50, 100, 200, 400],
    "mode": ["tool", "no-tool"],
}  # crossed with teacher.train.seed 0, 1, ... until there are enough points
VOCAB = 265
LOG_EVERY = 25
EVAL_EVERY = 250
ENV = {"cpu_count": 2, "device": "cpu", "git_commit": "3bf66808111a4798a926655f1edcf3c68487a855",
       "git_dirty": False, "host": "vm", "lmpipe_version": "0.1.0",
       "platform": "Linux-6.18.44-x86_64-with-glibc2.36", "python": "3.11.7",
       "torch": "2.13.0+cpu", "torch_threads": 2, "transformers": "5.23.0"}
START = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _dump(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = value


def n_params(d_model: int, n_layers: int = 2) -> int:
    """Parameters of lmpipe's Llama-style model (tied embeddings, d_ff = 4d): 148,352 at d=64."""
    return VOCAB * d_model + n_layers * (16 * d_model * d_model + 2 * d_model) + d_model


def _metrics_lines(rng: random.Random, budget: int, *, extra: tuple[str, ...] = (),
                   floor: float = 0.05, evals: bool = True) -> list[str]:
    """metrics.jsonl lines of one training run holding exactly `budget` numeric fields."""
    lines: list[str] = []
    step, tokens, left = 0, 0, budget
    peak = 430.0
    while left > 0:
        if step == 0:
            record: dict[str, Any] = {"step": 0, "tokens": 0, "val_loss": 5.57 + rng.gauss(0, 0.01),
                                      "flops_per_token": 1038720.0, "peak_flops": 1.9e11}
        else:
            tokens += LOG_EVERY * 3100 + rng.randrange(60)
            rss = 430 + 30 * rng.random()
            peak = max(peak, rss)
            step_time = 0.04 * (1 + 0.1 * rng.random())
            record = {"step": step, "tokens": tokens,
                      "loss": floor + 5.2 * math.exp(-step / 180) * (1 + 0.05 * rng.gauss(0, 1)),
                      "lr": 0.003 * min(1.0, step / 100) * (0.55 + 0.45 * math.cos(step / 4000)),
                      "grad_norm": 1.4 * math.exp(-step / 2000) + 0.1 * rng.random(),
                      "tokens_per_s": 78000 + 3000 * rng.random(), "step_time_s": step_time,
                      "time_data_s": 0.0005, "time_forward_backward_s": step_time - 0.0017,
                      "time_optimizer_s": 0.0012, "time_logging_s": 1e-05,
                      "mfu": 0.42 + 0.02 * rng.random(), "rss_mb": rss, "peak_rss_mb": peak}
            for term in extra:
                record[term] = record["loss"] * (0.2 + 0.6 * rng.random())
            if evals and step % EVAL_EVERY == 0:
                record.update(val_loss=record["loss"] * 1.05, rss_before_eval_mb=rss,
                              eval_rss_mb=rss - 12.0, rss_after_eval_mb=rss - 12.0,
                              recall=min(0.99, step / 20000), tool_accuracy=min(0.98, step / 2500))
        numeric = [k for k in record if k != "step"]
        if len(numeric) > left:  # the last line carries only what is left of the budget
            record = {"step": record["step"], **{k: record[k] for k in numeric[:left]}}
        left -= len(record) - 1
        lines.append(json.dumps(record))
        step += LOG_EVERY
    return lines


def _write_run(folder: Path, *, stage: str, name: str, params: dict[str, Any], started: datetime,
               wall: float, metrics: list[str], summary: dict[str, Any] | None,
               evals: list[dict[str, Any]] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _dump(folder / "params.json", {**params, "run": {"name": name, "stage": stage}})
    ended = started + timedelta(seconds=wall)
    env = {**ENV, "started_at": _iso(started)}
    if summary is not None:
        env["ended_at"] = _iso(ended)
    _dump(folder / "env.json", env)
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in metrics))
    if evals is not None:
        (folder / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    if summary is not None:
        _dump(folder / "summary.json", {"stage": stage, "name": name, "status": "completed",
                                        "started_at": _iso(started), "ended_at": _iso(ended),
                                        "wall_time_s": wall, "peak_rss_mb": 478.8, **summary})


def _eval(model: str, metric: str, split: str, value: float, n: int | None = 150,
          attribute: str | None = None) -> dict[str, Any]:
    return {"model": model, "metric": metric, "split": split, "attribute": attribute,
            "value": value, "n": n}


def _point_evals(rng: random.Random, d_model: int, people: int, tool: bool) -> list[dict[str, Any]]:
    """The teacher's eval at one sweep point: recall falls once the facts exceed ~2 bits/param."""
    params = n_params(d_model)
    need = people * 6 * 8  # six attributes, ~8 bits each
    stored = 2 * params / 40  # 2 bits/param at best; these short runs fill a fortieth of it
    recall = 0.01 * rng.random() if tool else min(0.97, stored / need) * rng.uniform(0.9, 1)
    tool_acc = min(0.995, rng.gauss(0.95, 0.02) * (0.9 + d_model / 1280)) if tool else 0.0
    bits = recall * need
    return [_eval("teacher", "parameters", "model", float(params), None),
            _eval("teacher", "knowledge_bits", "trained", bits),
            _eval("teacher", "bits_per_param", "trained", bits / params),
            _eval("teacher", "recall", "trained", recall),
            _eval("teacher", "tool_accuracy", "trained", tool_acc),
            _eval("teacher", "tool_accuracy", "heldout", tool_acc * rng.uniform(0.97, 1.0)),
            _eval("teacher", "val_loss", "val", 0.05 + 2.0 / math.sqrt(d_model) * rng.uniform(0.9, 1.1))]


def write_synthetic_runs(root: Path, runs: int = 1000, metric_rows: int = 1_000_000,
                         seed: int = 0) -> dict[str, int]:
    """Write `runs` run folders holding `metric_rows` metric rows in all under `root`.

    Returns {"runs", "metric_rows", "points", "eval_rows"} as written.
    """
    root = Path(root)
    rng = random.Random(seed)
    base = Params().model_dump(mode="json")
    _set(base, "teacher.train.eval_every", EVAL_EVERY)  # what the metrics below log
    sweep_folders = runs - len(DEFAULT_RUNS)
    if sweep_folders < 1:
        raise ValueError(f"runs must be more than {len(DEFAULT_RUNS)} (the default runs)")
    n_points = math.ceil(sweep_folders / 2)
    failed_last = 2 * n_points > sweep_folders  # an odd count: the last point has no eval run
    per_seed = math.prod(len(v) for v in AXES.values())
    axes = {**AXES, "teacher.train.seed": list(range(math.ceil((n_points + 2) / per_seed)))}
    combos = list(itertools.islice(itertools.product(*axes.values()), n_points + 2))
    train_runs = 4 + n_points  # teacher, student, distill, quantize + one per point
    share, extra_rows = divmod(metric_rows, train_runs)
    budgets = [share + (i < extra_rows) for i in range(train_runs)]
    eval_rows = 0
    clock = START

    # The default experiment: teacher and scratch student, distilled and quantized students.
    defaults = [("teacher", "train", "teacher", (), 0.0002),
                ("student", "train", "student", (), 0.15),
                ("distill", "distill", "distilled", ("loss_forward_kl", "loss_ce", "loss_attention_kl"), 0.008),
                ("quantize", "quantize", "quantized", ("loss_forward_kl", "loss_ce"), 0.01)]
    for budget, (folder, stage, name, terms, floor) in zip(budgets, defaults):
        lines = _metrics_lines(rng, budget, extra=terms, floor=floor)
        last = json.loads(lines[-1])
        _write_run(root / folder, stage=stage, name=name, params=base, started=clock, wall=66.9,
                   metrics=lines, summary={"final_train_loss": floor, "steps": last["step"],
                                           "params_count": n_params(48 if folder != "teacher" else 64)})
        clock += timedelta(minutes=2)
    models = {"teacher": (0.0, 0.995), "student": (0.0, 0.176), "distilled": (0.0, 0.977),
              "quantized": (0.0, 0.910)}
    evals = []
    for model, (recall, heldout) in models.items():
        evals += [_eval(model, "recall", "trained", recall, 200),
                  _eval(model, "tool_accuracy", "trained", min(1.0, heldout * 1.01), 1200),
                  _eval(model, "tool_accuracy", "heldout", heldout, 1200),
                  _eval(model, "val_loss", "val", 0.01 / max(heldout, 0.1)),
                  _eval(model, "weight_bytes", "model", 593408.0 if model == "teacher" else 346752.0, None)]
        evals += [_eval(model, "tool_accuracy", "heldout", heldout, 200, attribute=a)
                  for a in ("birth_date", "birth_city", "university", "major", "employer", "employer_city")]
    _write_run(root / "eval", stage="eval", name="eval", params=base, started=clock, wall=52.0,
               metrics=[], summary={}, evals=evals)
    eval_rows += len(evals)

    # The sweep.
    sweep_dir = root / "sweeps" / SWEEP_ID
    width = max(2, len(str(len(combos) - 1)))
    points = []
    for i, values in enumerate(combos):
        point = f"p{i:0{width}d}"
        d_model, people, mode, train_seed = values
        tool = mode == "tool"
        overrides = {"teacher.model.d_model": d_model, "world.people": people,
                     "world.tool_dialogs": tool, "world.qa_dialogs": not tool,
                     "teacher.train.seed": train_seed}
        pending = i >= n_points
        failed = failed_last and i == n_points - 1
        status = "pending" if pending else "failed" if failed else "completed"
        entry = {"point": point, "params": overrides, "status": status,
                 "exp": None if pending else f"synth-{point}", "attempts": 0 if pending else 1 + failed,
                 "wall_time_s": None if pending else round(rng.uniform(60, 240), 1),
                 "error": "stage train@teacher failed: RuntimeError: loss is NaN" if failed else None}
        points.append(entry)
        if pending:
            continue
        point_dir = sweep_dir / point
        _dump(point_dir / "point.json", {"sweep": SWEEP_ID, "point": point, "params": overrides,
                                         "status": status, "exp": entry["exp"]})
        params = json.loads(json.dumps(base))
        for key, value in overrides.items():
            _set(params, key, value)
        lines = _metrics_lines(rng, budgets[4 + i], floor=0.02 + 1.0 / d_model, evals=True)
        last = json.loads(lines[-1])
        if failed:  # killed mid-write: the store skips and counts this line
            lines.append(f'{{"step": {last["step"] + LOG_EVERY}, "tokens": 1')
        _write_run(point_dir / "teacher", stage="train", name="teacher", params=params,
                   started=clock, wall=round(last["step"] * 0.04, 1), metrics=lines,
                   summary=None if failed else {"final_train_loss": json.loads(lines[-2])["loss"],
                                                "steps": last["step"], "params_count": n_params(d_model),
                                                "resumed": False, "world_size": 1})
        clock += timedelta(minutes=3)
        if not failed:
            point_evals = _point_evals(rng, d_model, people, tool)
            _write_run(point_dir / "eval", stage="eval", name="eval", params=params, started=clock,
                       wall=30.0, metrics=[], summary={}, evals=point_evals)
            eval_rows += len(point_evals)
            clock += timedelta(minutes=1)
    _dump(sweep_dir / "sweep.json", {"sweep": SWEEP_ID, "grid": "grids/synth.yaml",
                                     "created_at": _iso(START), "axes": axes, "points": points})
    return {"runs": runs, "metric_rows": metric_rows, "points": len(points), "eval_rows": eval_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--metric-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_synthetic_runs(args.root, args.runs, args.metric_rows, args.seed))


if __name__ == "__main__":
    main()
