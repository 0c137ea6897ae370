"""Training checkpoints: atomic, pruned to the last K, and enough to resume bit-for-bit.

A checkpoint is a folder `checkpoints/step_00001200/` holding the model (`save_pretrained`,
safetensors), `optimizer.pt`, `rng.pt` (torch CPU/CUDA generator states), `trainer_state.json`
(step, tokens seen, the fingerprint of the parameters that produced it) and `params.json`. It is
written to a hidden temporary folder and renamed into place, so a kill mid-write leaves either
the previous checkpoint or the new one, never half of one. Batches are a pure function of the
step, so the step is also the data-loader position.

A run on a device mesh (`train.mesh`, lmpipe/train/mesh.py) writes its model and optimizer
sharded instead, with `torch.distributed.checkpoint` (DCP) into the checkpoint's `dcp/` folder:
every process writes its own shards, nothing is gathered. DCP reshards on load, so such a
checkpoint resumes on any mesh shape (2 x 2, 1 x 4, 4 x 1) and in a single process, each
loading just the parts it holds. The fingerprint leaves the mesh out for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lmpipe.core.run_folder import PARAMS_FILE

PREFIX = "step_"


def checkpoint_step(path: str | Path) -> int:
    """The step of a `step_N` checkpoint folder, from its name."""
    name = Path(path).name
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        raise ValueError(f"{path}: not a checkpoint folder (expected {PREFIX}<step>)")
    return int(name[len(PREFIX):])


def fingerprint(params: dict[str, Any]) -> str:
    """A hash of the parameters that define a run: a checkpoint resumes only the same run. The
    device mesh (`mesh` of a train section) is not one of them: a sharded checkpoint resumes on
    any mesh."""
    return hashlib.sha256(json.dumps(_without_mesh(params), sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def _without_mesh(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    return {k: _without_mesh(v) for k, v in tree.items()
            if not (k == "mesh" and "optimizer" in tree)}


@dataclass
class TrainerState:
    step: int
    tokens_seen: int
    fingerprint: str
    initial_val_loss: float = float("nan")


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainerState, params: dict[str, Any], keep: int) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{state.step:08d}"
    tmp = folder / f".tmp-{PREFIX}{state.step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state.__dict__, indent=2) + "\n")
    (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2, default=str) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic on one filesystem: the checkpoint appears whole or not at all
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old)
    return final


def save_sharded_checkpoint(folder: Path, model: torch.nn.Module,
                            optimizer: torch.optim.Optimizer, state: TrainerState,
                            params: dict[str, Any], keep: int, is_main: bool) -> Path:
    """`save_checkpoint` for a model on a device mesh: a collective every process calls. Each
    writes its shards of the model and optimizer state (DCP) into one temporary folder, which
    rank 0 completes and renames into place once all have written."""
    import torch.distributed as torch_dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    final = folder / f"{PREFIX}{state.step:08d}"
    tmp = folder / f".tmp-{PREFIX}{state.step:08d}-sharded"  # one name every process agrees on
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    torch_dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "dcp"))
    torch_dist.barrier()
    if is_main:
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state.__dict__, indent=2) + "\n")
        (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2, default=str) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old)
    torch_dist.barrier()
    return final


def _load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer state from a checkpoint's DCP shards, resharded onto however this
    run holds them: sharded on a mesh, or whole in one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def is_sharded(path: Path) -> bool:
    """Whether a checkpoint holds DCP shards (written on a device mesh)."""
    return (Path(path) / "dcp").is_dir()


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted write excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file())


def latest_checkpoint(folder: Path, expect_fingerprint: str) -> Path | None:
    """The newest checkpoint written by a run with these exact parameters, if any."""
    for path in reversed(list_checkpoints(folder)):
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("fingerprint") == expect_fingerprint:
            return path
    return None


def load_checkpoint(path: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> TrainerState:
    """Restore model weights, optimizer state and RNG states in place; return the trainer state.
    A sharded checkpoint loads on any mesh or none; a whole one only into a whole model."""
    path = Path(path)
    if is_sharded(path):
        _load_sharded(path, model, optimizer)
    else:
        _load_whole(path, model, optimizer)
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainerState(**json.loads((path / "trainer_state.json").read_text()))


def _load_whole(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    weights = load_file(path / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}  # saved once when tied
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model "
                         f"(missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


def remove_checkpoints(folder: Path) -> None:
    """Delete every checkpoint (and leftover temporary folder): a fresh run must not mix in
    checkpoints that other parameters produced."""
    folder = Path(folder)
    if folder.is_dir():
        shutil.rmtree(folder)
