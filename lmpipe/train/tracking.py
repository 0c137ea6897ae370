"""Optional experiment trackers that mirror the run folder's metrics (Weights & Biases).

The run folder is always the record; a tracker is a copy for people who browse runs in a
dashboard. `wandb: offline` writes wandb's files into the run folder with no network at all
(`wandb sync` uploads them later); `online` needs a login. wandb is never required: it is only
imported when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class WandbTracker:
    def __init__(self, mode: str, project: str, name: str, folder: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ImportError("train.wandb is set but wandb is not installed: "
                              "pip install wandb (or set train.wandb: off)") from None
        self.run = wandb.init(mode=mode, project=project, name=name, dir=str(folder),
                              config=config, reinit="finish_previous")

    def log(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(mode: str, project: str, name: str, folder: Path | None,
                 config: dict[str, Any]) -> WandbTracker | None:
    if mode == "off" or folder is None:
        return None
    return WandbTracker(mode, project, name, folder, config)
