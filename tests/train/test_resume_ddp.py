"""Checkpoints resume bit-for-bit after SIGKILL; 2-process DDP matches one process exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).parents[1] / "drivers" / "train_tiny.py"


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _train(tokens, run, steps, *extra, launcher=(sys.executable,), check=True):
    result = subprocess.run([*launcher, str(DRIVER), str(tokens), str(run), str(steps), *extra],
                            capture_output=True, text=True, env=_env())
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


def _summary(run):
    return json.loads((Path(run) / "summary.json").read_text())


def _steps(run):
    return [json.loads(line)["step"] for line in (Path(run) / "metrics.jsonl").open()]


def test_sigkill_then_rerun_reaches_the_uninterrupted_loss(tiny_tokens, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(tiny_tokens, straight, 40, "--set", "checkpoint_every=10")
    died = _train(tiny_tokens, killed, 40, "--kill-at", "27", "--set", "checkpoint_every=10",
                  check=False)
    assert died.returncode == -9  # SIGKILL, mid-run
    checkpoints = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert checkpoints == ["step_00000010", "step_00000020"]
    assert not (killed / "summary.json").exists()
    _train(tiny_tokens, killed, 40, "--set", "checkpoint_every=10")
    a, b = _summary(straight), _summary(killed)
    assert b["resumed"] is True and a["resumed"] is False
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], abs=1e-6)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], abs=1e-6)
    assert b["initial_val_loss"] == a["initial_val_loss"] and b["tokens_seen"] == a["tokens_seen"]
    assert _steps(killed) == _steps(straight)  # the log was rewound to the checkpoint, no repeats
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_00000030",
                                                                           "step_00000040"]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tiny_tokens, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _train(tiny_tokens, single, 12, "--set", "batch_size=8")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    _train(tiny_tokens, ddp, 12, "--set", "batch_size=8", launcher=torchrun)
    a, b = _summary(single), _summary(ddp)
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-5)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=1e-5)
    assert b["tokens_seen"] == a["tokens_seen"]


def test_gradient_accumulation_matches_one_big_batch(tiny_tokens, tmp_path):
    big, accumulated = tmp_path / "big", tmp_path / "accum"
    _train(tiny_tokens, big, 30, "--set", "batch_size=8")
    _train(tiny_tokens, accumulated, 30, "--set", "batch_size=4", "grad_accum=2")
    a, b = _summary(big), _summary(accumulated)
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-5)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=1e-5)
    assert b["final_train_loss"] < 0.9 * a["initial_val_loss"]  # and it did train


def test_killed_ddp_run_resumes_on_every_process(tiny_tokens, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    _train(tiny_tokens, single, 20, "--set", "batch_size=8", "checkpoint_every=5")
    died = _train(tiny_tokens, ddp, 20, "--kill-at", "13", "--set", "batch_size=8",
                  "checkpoint_every=5", launcher=torchrun, check=False)
    assert died.returncode != 0 and not (ddp / "summary.json").exists()
    _train(tiny_tokens, ddp, 20, "--set", "batch_size=8", "checkpoint_every=5", launcher=torchrun)
    a, b = _summary(single), _summary(ddp)
    assert b["resumed"] is True and b["world_size"] == 2
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-5)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=1e-5)


def test_default_checkpoint_interval_bounds_what_a_kill_costs(tiny_tokens, tmp_path):
    """With TrainParams' default interval (100), a SIGKILL at step 115 resumes from step 100 and
    ends where an uninterrupted run ends."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(tiny_tokens, straight, 120)
    died = _train(tiny_tokens, killed, 120, "--kill-at", "115", check=False)
    assert died.returncode == -9
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_00000100"]
    _train(tiny_tokens, killed, 120)
    a, b = _summary(straight), _summary(killed)
    assert a["resumed_from"] is None and b["resumed_from"] == 100
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], abs=1e-6)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], abs=1e-6)


def test_an_infinite_loss_stops_the_run_as_diverged(tiny_tokens, tmp_path):
    run = tmp_path / "nan"
    result = _train(tiny_tokens, run, 40, "--inf-at", "25", "--set", "checkpoint_every=10",
                    check=False)
    assert result.returncode != 0
    assert "diverged at step 25: non-finite loss" in result.stderr
    summary = _summary(run)
    assert summary["status"] == "diverged" and summary["failed_at_step"] == 25
    # the last good checkpoint stays; nothing from the diverged step (or after) was saved
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000010",
                                                                        "step_00000020"]
    assert max(_steps(run)) < 25


def test_an_epoch_remainder_never_makes_an_empty_micro_batch(tiny_tokens, tmp_path):
    """351 train documents in global batches of 5 x 7 = 35 leave a remainder of 1: the last batch
    of an epoch is dropped (not split into 6 empty micro-batches), in one process and in two."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    options = ("--set", "batch_size=5", "grad_accum=7")
    _train(tiny_tokens, single, 12, *options)  # steps 11 and 12 are the second epoch's
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    _train(tiny_tokens, ddp, 12, *options, launcher=torchrun)
    a, b = _summary(single), _summary(ddp)
    assert a["status"] == b["status"] == "completed" and b["world_size"] == 2
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-5)
    assert b["tokens_seen"] == a["tokens_seen"]
