"""Run folders: the on-disk record every training-like stage leaves behind.

A run folder holds `params.json` (the resolved parameters), `env.json` (where and with what it
ran), `metrics.jsonl` (one JSON object per logged step) and `summary.json` (final figures and
status). Metric records go to the file, never to stdout, so console logging stays free-form.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lmpipe
from lmpipe.core.jsonl import read_jsonl
from lmpipe.core.profiler import memory_record

# The files of a run folder, named here once: the store, the checkpoint evals, the probes and the
# flows read what the run wrote under these names.
PARAMS_FILE = "params.json"            # the resolved section (also in every checkpoint folder)
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
EVALS_FILE = "evals.jsonl"             # per-question eval records (eval stage, checkpoint evals)
CHECKPOINT_EVALS_FILE = "checkpoint_evals.jsonl"   # which checkpoints were evaluated, and how
PROBES_FILE = "probes.jsonl"           # activation probes recorded while training
LINEAR_PROBES_FILE = "linear_probes.jsonl"         # `lmpipe probe RUN`, written after the run
RUN_FILES = (PARAMS_FILE, SUMMARY_FILE, ENV_FILE, METRICS_FILE, EVALS_FILE, PROBES_FILE,
             LINEAR_PROBES_FILE)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The commit and dirty flag of the repository around `cwd`, or nulls outside a git tree."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def environment_record(device: str) -> dict[str, Any]:
    """Versions, host and device: enough to tell two runs' environments apart."""
    import torch
    import transformers

    return {
        "lmpipe_version": lmpipe.__version__,
        **git_state(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


class RunLog:
    """Writes one run folder. Use as a context manager so the summary records success or failure."""

    def __init__(self, folder: str | Path, stage: str, name: str, params: dict[str, Any],
                 device: str = "cpu") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.name = name
        self.started = _utc_now()
        self._t0 = time.perf_counter()
        self._write_json(PARAMS_FILE, params)
        self.env = environment_record(device)
        self.env["started_at"] = self.started
        self._write_json(ENV_FILE, self.env)
        # append: a resumed run keeps what it logged before; `rewind` drops what came after
        # the checkpoint it resumed from.
        self._metrics = open(self.folder / METRICS_FILE, "a", encoding="utf-8")
        self._curve: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def _write_json(self, filename: str, payload: dict[str, Any]) -> None:
        tmp = self.folder / f".{filename}.tmp"
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.folder / filename)

    def rewind(self, step: int) -> None:
        """Keep only the records logged at or before `step` (0 = start the metrics afresh)."""
        path = self.folder / METRICS_FILE
        self._metrics.close()
        # a line cut short by the kill that made us resume is dropped
        kept = [r for r in read_jsonl(path)[0] if r.get("step", 0) <= step] if step > 0 else []
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        self._curve = [r for r in kept if "loss" in r]
        self._metrics = open(path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics record (must contain `step`); flushed so a crash loses nothing."""
        self._metrics.write(json.dumps(record, default=float) + "\n")
        self._metrics.flush()
        if "loss" in record:
            self._curve.append(record)

    def _write_curve(self) -> None:
        """`curve.csv` (step, tokens, loss, val_loss): the training curve in a format DVC plots read."""
        if not self._curve:
            return
        columns = ["step", "tokens", "loss", "val_loss"]
        rows = [",".join("" if r.get(c) is None else f"{r[c]:.6g}" for c in columns)
                for r in self._curve]
        (self.folder / "curve.csv").write_text("\n".join([",".join(columns), *rows]) + "\n")

    def finish(self, status: str = "completed", **summary: Any) -> None:
        self.summary.update(summary)
        ended = _utc_now()
        self.env["ended_at"] = ended
        self._write_json(ENV_FILE, self.env)
        self._write_json(SUMMARY_FILE, {
            "stage": self.stage,
            "name": self.name,
            "status": status,
            "started_at": self.started,
            "ended_at": ended,
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "peak_rss_mb": round(memory_record()["peak_rss_mb"], 1),
            **self.summary,
        })
        self._metrics.close()
        self._write_curve()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._metrics.closed:
            if exc is None:
                self.finish("completed")
                return
            # an exception may name its own status (lmpipe.train.loop.Diverged: "diverged")
            details = {"error": f"{exc_type.__name__}: {exc}"}
            if getattr(exc, "step", None) is not None:
                details["failed_at_step"] = exc.step
            self.finish(getattr(exc, "status", "failed"), **details)
