"""Prefect flow: evaluate a training run's checkpoints while it trains, without ever blocking it.

`watch_and_evaluate` polls the run's `checkpoints/` (in its staging folder while it trains) and submits one Prefect task per new finished
checkpoint (`step_N`); each task runs lmpipe.eval.checkpoints.evaluate_checkpoint, which appends
the step's validation loss and tool accuracy to the run's `evals.jsonl`. The flow ends once the
run's `summary.json` appears (or the training process named by `train_pid` exits) and every
checkpoint has been evaluated. Tasks take only a JSON string and a path, so nothing unserializable
(a torch.device, a database handle) ever enters a task's parameters.

`train_with_async_eval` is the usual entry: it starts `python -m stages.train <name>` in its own
process and runs the watcher beside it. Training never waits for an eval: the two only share files
(checkpoints written atomically by the trainer, read by the eval), and on 2 cores each side gets
one torch thread. Checkpoints pruned by `keep_checkpoints` before their eval starts are skipped.

    python flows/async_eval.py --name teacher                  # train@teacher with async evals
    python flows/async_eval.py --name teacher teacher.train.checkpoint_every=100
    python flows/async_eval.py --name teacher --watch-only     # watch a training run started elsewhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

import lmpipe  # noqa: F401  (sets the offline and no-analytics environment defaults)
from lmpipe.core.paths import PARAMS, TOKENS, WORLD, run_dir
from lmpipe.eval.checkpoints import (
    CheckpointEvalConfig,
    CheckpointVanished,
    eval_log,
    evaluate_checkpoint,
    evaluated_steps,
    live_run_folder,
    pending_checkpoints,
    preload,
)
from lmpipe.params.config import load_params
from lmpipe.runs.watched_run import opened_since, training_finished, watched_training_run
from lmpipe.train.checkpoint import checkpoint_step

PROJECT = Path(__file__).resolve().parents[1]


def _task_run_name() -> str:
    from prefect.runtime import task_run

    return f"eval {Path(task_run.parameters['checkpoint_dir']).name}"


# NO_CACHE: the same checkpoint path with the same config can hold other weights after a fresh run.
@task(task_run_name=_task_run_name, cache_policy=NO_CACHE)
def evaluate_checkpoint_task(config_json: str, checkpoint_dir: str) -> dict[str, Any]:
    """Evaluate one checkpoint; a checkpoint pruned before it could be read is skipped."""
    logger = get_run_logger()
    config = CheckpointEvalConfig.model_validate_json(config_json)
    step = checkpoint_step(Path(checkpoint_dir))
    try:
        try:
            records = evaluate_checkpoint(config, checkpoint_dir)
        except CheckpointVanished:
            # the run finished meanwhile: its staging folder was published as the run folder
            moved = live_run_folder(config.run_dir) / "checkpoints" / Path(checkpoint_dir).name
            if moved == Path(checkpoint_dir) or not moved.is_dir():
                raise
            records = evaluate_checkpoint(config, moved)
    except CheckpointVanished as exc:
        logger.warning("skipping step %d: %s", step, exc)
        return {"step": step, "status": "vanished"}
    figures = {f"{r['metric']}_{r['split']}": round(r["value"], 6) for r in records}
    logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    return {"step": step, "status": "done", **figures}


@flow(name="lmpipe-async-eval", log_prints=True,
      # more workers than max_concurrent: the flow itself throttles submissions
      task_runner=ThreadPoolTaskRunner(max_workers=8))
def watch_and_evaluate(config_json: str, poll_seconds: float = 2.0, stop_when_summary: bool = True,
                       max_concurrent: int = 1, not_before: float | None = None,
                       train_pid: int | None = None,
                       timeout_seconds: float | None = None) -> list[dict[str, Any]]:
    """Evaluate every checkpoint of the run in `config_json` (a CheckpointEvalConfig as JSON) as
    it appears, at most `max_concurrent` at a time; return one outcome per checkpoint.

    Ends when training is over — `summary.json` exists (written at or after `not_before`, a unix
    time, when given), or process `train_pid` has exited — and no checkpoint is left to evaluate;
    or after `timeout_seconds` (then only running evals are awaited). Steps already in the run's
    `checkpoint_evals.jsonl` are not evaluated again. Raises RuntimeError if any eval failed.
    """
    logger = get_run_logger()
    if poll_seconds <= 0 or max_concurrent < 1:
        raise ValueError(f"poll_seconds must be > 0 and max_concurrent >= 1, got {poll_seconds} "
                         f"and {max_concurrent}")
    config = CheckpointEvalConfig.model_validate_json(config_json)
    final = Path(config.run_dir)
    run = live_run_folder(final)
    done = evaluated_steps(run)
    if done:
        logger.info("%s: steps %s already evaluated", run, sorted(done))
    running: dict[int, PrefectFuture] = {}
    outcomes: list[dict[str, Any]] = []
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    while True:
        # decided before the scan: training writes its last checkpoint before summary.json and
        # before exiting, so once finished, this scan sees every checkpoint there will be
        finished = training_finished(final, stop_when_summary, not_before, train_pid)
        timed_out = deadline is not None and time.monotonic() > deadline
        # checkpoints live in the staging folder while the run trains, in the run folder after
        run = live_run_folder(final)
        pending = ([] if timed_out or not opened_since(run, not_before)
                   else pending_checkpoints(run, done | set(running)))
        for checkpoint in pending[:max(0, max_concurrent - len(running))]:
            running[checkpoint_step(checkpoint)] = evaluate_checkpoint_task.submit(
                config_json, str(checkpoint))
        if (finished or timed_out) and not running and not pending:
            break
        if running:
            # doubles as the poll sleep, but returns as soon as an eval ends
            finished_futures, _ = wait(list(running.values()), timeout=poll_seconds)
            for step in [s for s, f in running.items() if f in finished_futures]:
                future = running.pop(step)
                try:
                    # result(), not .state: the API's copy of the state may still say Running
                    outcomes.append(future.result())
                except Exception as exc:  # the eval's own error; the others go on
                    logger.error("eval of step %d failed: %r", step, exc)
                    outcomes.append({"step": step, "status": "failed", "error": repr(exc)})
                done.add(step)  # a failed eval is not retried in a loop; rerun the flow instead
        else:
            time.sleep(poll_seconds)
    if timed_out:
        logger.warning("stopped watching %s after %s s", run, timeout_seconds)
    outcomes.sort(key=lambda o: o["step"])
    failed = [o["step"] for o in outcomes if o["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{run}: the evals of steps {failed} failed (see the task logs)")
    return outcomes


def watch(config: CheckpointEvalConfig, **options: Any) -> list[dict[str, Any]]:
    """`watch_and_evaluate` for a config object (it is passed on as JSON)."""
    return watch_and_evaluate(config.model_dump_json(), **options)


def _prefect_api_ready() -> None:
    """Start Prefect's API before training starts: the ephemeral server takes 7-14 s to come up on
    2 cores, and the first checkpoints should not wait on it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.hello()


def train_with_async_eval(name: str, workdir: str | Path = PROJECT, overrides: Sequence[str] = (),
                          *, poll_seconds: float = 2.0, max_concurrent: int = 1,
                          trained_people: int = 16, heldout_people: int = 16,
                          max_new_tokens: int = 48, batch_size: int = 64, eval_threads: int = 1,
                          train_threads: int = 1,
                          timeout_seconds: float | None = None) -> dict[str, Any]:
    """Run `python -m stages.train <name> [overrides]` in a subprocess in `workdir` (the DVC
    workspace, or its params.yaml: it holds data/world and data/tokens; the run goes to
    runs/<name>), and the checkpoint watcher in this process until training has exited and every
    checkpoint is evaluated. Returns the training exit time, the eval log entries and the
    watcher's outcomes. Raises RuntimeError (after the evals) if training failed.

    The run trains in its staging folder (`runs/.staging/<name>`) and is published to
    runs/<name> when it finishes; the watcher follows it there. A run that cannot resume (no
    checkpoint of its identity) starts from an empty staging folder, so no previous run's
    checkpoint is evaluated. `train_threads` applies through OMP_NUM_THREADS, so the run's
    identity keeps `train.threads` from params.
    """
    workdir, run, config = watched_training_run(
        name, workdir, overrides, trained_people=trained_people, heldout_people=heldout_people,
        max_new_tokens=max_new_tokens, batch_size=batch_size, threads=eval_threads)
    _prefect_api_ready()
    preload()

    env = os.environ.copy()
    # `stages` is imported from this project, whatever workspace we train in
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), *filter(None, [env.get("PYTHONPATH")])])
    if train_threads:
        env.update(OMP_NUM_THREADS=str(train_threads), MKL_NUM_THREADS=str(train_threads))
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", name, *overrides], cwd=workdir,
                            env=env)
    exit_time: dict[str, float] = {}

    def reap() -> None:  # reaped at once, so the watcher sees the pid gone when training ends
        proc.wait()
        exit_time["t"] = time.time()

    reaper = threading.Thread(target=reap, name="train-reaper", daemon=True)
    reaper.start()
    try:
        outcomes = watch_and_evaluate(config.model_dump_json(), poll_seconds=poll_seconds,
                                      max_concurrent=max_concurrent, not_before=started,
                                      train_pid=proc.pid, timeout_seconds=timeout_seconds)
    except BaseException:
        proc.terminate()  # the watcher failed or was interrupted: do not leave training orphaned
        raise
    finally:
        reaper.join()
    if proc.returncode != 0:
        raise RuntimeError(f"python -m stages.train {name} (in {workdir}) exited with code "
                           f"{proc.returncode}; its checkpoints were evaluated up to the failure")
    log = [e for e in eval_log(run) if e.get("started_at", 0) >= started]
    return {"run_dir": str(run), "train_started_at": started, "train_ended_at": exit_time["t"],
            "evals": log, "outcomes": outcomes,
            "evals_during_training": sum(e["started_at"] < exit_time["t"] for e in log)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="teacher", choices=["teacher", "student"])
    parser.add_argument("--workdir", default=str(PROJECT), help="DVC workspace (params.yaml, data/)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between checkpoint scans")
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--trained-people", type=int, default=16)
    parser.add_argument("--heldout-people", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-threads", type=int, default=1)
    parser.add_argument("--train-threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None, help="stop watching after N seconds")
    parser.add_argument("--watch-only", action="store_true",
                        help="only watch runs/<name> (training started elsewhere)")
    parser.add_argument("overrides", nargs="*", help="params overrides key.sub=value")
    args = parser.parse_args(argv)
    if args.watch_only:
        workdir = Path(args.workdir).resolve()
        params = load_params(workdir / PARAMS, args.overrides)
        config = CheckpointEvalConfig(
            run_dir=str(workdir / run_dir(args.name)), tokens_dir=str(workdir / TOKENS),
            db_path=(str(workdir / WORLD / "people.duckdb") if params.data.source == "people"
                     else None),
            run_name=args.name, trained_people=args.trained_people,
            heldout_people=args.heldout_people, seed=params.eval.seed,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            threads=args.eval_threads)
        result: Any = watch(config, poll_seconds=args.poll, max_concurrent=args.max_concurrent,
                            timeout_seconds=args.timeout)
    else:
        result = train_with_async_eval(
            args.name, args.workdir, args.overrides, poll_seconds=args.poll,
            max_concurrent=args.max_concurrent, trained_people=args.trained_people,
            heldout_people=args.heldout_people, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, eval_threads=args.eval_threads,
            train_threads=args.train_threads, timeout_seconds=args.timeout)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
