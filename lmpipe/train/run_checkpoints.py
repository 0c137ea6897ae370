"""A training run's checkpoints as its loop uses them: resume from the newest one written with the
same parameters, save (sharded on a device mesh, whole otherwise), clear stale ones on a fresh start.

The file format, atomic writes and pruning are lmpipe/train/checkpoint.py's; this decides which
process writes what, and refuses a checkpoint the run cannot load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmpipe.core.section import ConfigError
from lmpipe.train.checkpoint import (
    TrainerState,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    save_sharded_checkpoint,
)
from lmpipe.train.distributed import Dist


@dataclass(frozen=True)
class RunCheckpoints:
    """`folder`: the run's `checkpoints/` (None: a run without a folder keeps none);
    `fingerprint`: the parameters' hash a checkpoint must carry to be resumed; `sharded`: the run
    trains on a device mesh, so every process writes its own shards."""

    folder: Path | None
    fingerprint: str
    run_params: dict[str, Any]
    keep: int
    sharded: bool
    dist: Dist

    def resume(self, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer) -> TrainerState | None:
        """Load the newest matching checkpoint into `model` and `optimizer`; None when there is
        none, and the run starts fresh."""
        path = None if self.folder is None else latest_checkpoint(self.folder, self.fingerprint)
        if path is None:
            return None
        if self.sharded and not is_sharded(path):
            raise ConfigError(f"{path}: a whole-model checkpoint (written without train.mesh) "
                              "does not load onto a mesh; resume it without train.mesh, or "
                              "remove it to start over")
        return load_checkpoint(path, model, optimizer)

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
             tokens_seen: int, initial_val_loss: float) -> None:
        """Write the checkpoint of `step`: on a mesh every process its shards, otherwise rank 0
        the whole model; every process returns once it is written."""
        state = TrainerState(step, tokens_seen, self.fingerprint, initial_val_loss)
        if self.sharded and self.folder is not None:
            save_sharded_checkpoint(self.folder, model, optimizer, state, self.run_params,
                                    self.keep, self.dist.is_main)
            return
        if self.dist.is_main and self.folder is not None:
            save_checkpoint(self.folder, model, optimizer, state, self.run_params, self.keep)
        self.dist.barrier()

    def clear(self) -> None:
        """Remove every checkpoint (a fresh start: none of them belongs to this run any more)."""
        if self.folder is not None:
            remove_checkpoints(self.folder)
