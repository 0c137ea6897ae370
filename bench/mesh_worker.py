"""One process of bench/mesh.py: train a Llama on a (dp, tp) mesh (or alone), then profile one
more step's collectives, and write this rank's figures as JSON.

usage (under torchrun, or plainly for one process):
    python bench/mesh_worker.py TOKENS OUT DPxTP|none STEPS D_MODEL LAYERS HEADS BATCH BLOCK
Writes OUT/rank<r>.json: peak RSS, the bytes of the parameters and optimizer state this process
holds, rank 0 also tokens/s (median of the log windows after the first) and the collectives of
one step as the profiler saw them at the gloo level (count and payload bytes per kind).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpipe.data.tokenizer import special_id
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams
from lmpipe.train.loop import Trainer
from lmpipe.train.optim import state_bytes
from lmpipe.train.params import TrainParams

COLLECTIVES = ("gloo:all_reduce", "gloo:all_gather", "gloo:reduce_scatter", "gloo:broadcast")


def local_bytes(tensors) -> int:
    """Bytes of the shards this process holds (a DTensor's local part, else the tensor)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def collectives(prof) -> dict[str, dict[str, int]]:
    """Per gloo collective: how many calls and the bytes of the tensors handed to them (fp32)."""
    seen: dict[str, dict[str, int]] = {}
    for event in prof.events():
        if event.name in COLLECTIVES:
            row = seen.setdefault(event.name.removeprefix("gloo:"), {"calls": 0, "bytes": 0})
            row["calls"] += 1
            for shape in event.input_shapes[:1]:
                numel = 1
                for n in shape:
                    numel *= n
                row["bytes"] += 4 * numel
    return seen


def main() -> None:
    tokens, out, mesh, steps, d_model, layers, heads, batch, block = sys.argv[1:10]
    mesh_spec = None if mesh == "none" else dict(zip(("dp", "tp"), map(int, mesh.split("x"))))
    tp = TrainParams(steps=int(steps), batch_size=int(batch), sampling="windows",
                     block_size=int(block), loss_on="all", warmup_steps=2, log_every=2,
                     eval_every=10_000, eval_batches=1, checkpoint_every=0, threads=1,
                     mesh=mesh_spec)
    model = build_model(ModelParams(d_model=int(d_model), n_layers=int(layers),
                                    n_heads=int(heads), max_seq_len=int(block) + 1), seed=0)
    trainer = Trainer(model, TokenSplit.open(tokens, "train"), TokenSplit.open(tokens, "val"), tp,
                      None, special_id("<|pad|>"))
    records: list[dict] = []
    trainer._log = records.append  # the figures stay in memory: no run folder to write
    trainer.fit()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trainer.train_step(tp.steps)
    rank = trainer.dist.rank
    figures = {
        "rank": rank,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "param_bytes": local_bytes(model.parameters()),
        "optimizer_bytes": state_bytes(trainer.optimizer),
    }
    if rank == 0:
        speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
        figures |= {"tokens_per_s": statistics.median(speeds),
                    "final_loss": records[-1].get("loss"),
                    "collectives": collectives(prof)}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(figures) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
