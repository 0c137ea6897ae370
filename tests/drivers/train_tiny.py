"""Test driver: train a tiny model on a token folder, optionally SIGKILL itself mid-run.

usage: python train_tiny.py TOKENS_DIR RUN_DIR STEPS [--kill-at N] [--inf-at N] [--set key=value ...]
                          [--model key=value ...] [--export]
Run it under `torchrun` for data parallelism (`--set mesh=DPxTP` for a device mesh); it writes
RUN_DIR/summary.json like a stage does. `--export` also writes the trained model as one
transformers directory (RUN_DIR/model, gathered from its shards on a mesh) and the logits the
trained model in memory gives for the first validation batch (RUN_DIR/logits.pt). With
`--set compile=true` rank 0 writes torch.compile's counters (RUN_DIR/compiled.json).
"""

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import yaml

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokenizer import special_id
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams
from lmpipe.train.distributed import init_distributed
from lmpipe.train.loop import train
from lmpipe.train.losses import cross_entropy_objective
from lmpipe.train.params import TrainParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tokens")
    parser.add_argument("run")
    parser.add_argument("steps", type=int)
    parser.add_argument("--kill-at", type=int, default=0, help="SIGKILL on this objective call")
    parser.add_argument("--kill-rank", type=int, default=None,
                        help="under torchrun: only this rank kills itself (default: every rank)")
    parser.add_argument("--inf-at", type=int, default=0,
                        help="make the loss of this objective call infinite (a forced divergence)")
    parser.add_argument("--set", nargs="*", default=[])
    parser.add_argument("--model", nargs="*", default=[], help="ModelParams fields (integers)")
    parser.add_argument("--export", action="store_true")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    mesh = overrides.pop("mesh", None)
    if mesh is not None:
        dp, tp_size = (int(n) for n in mesh.split("x"))
        overrides_mesh = {"mesh": {"dp": dp, "tp": tp_size}}
    else:
        overrides_mesh = {}
    shape = {"d_model": 16, "n_layers": 1, "n_heads": 2,
             **{k: int(v) for k, v in (item.split("=", 1) for item in args.model)}}
    # checkpoint_every: TrainParams' default unless set
    settings = {"batch_size": 8, "grad_accum": 1, "warmup_steps": 3, "log_every": 5,
                "eval_every": 10, "threads": 1, **{k: yaml.safe_load(v) for k, v in overrides.items()}}
    tp = TrainParams(steps=args.steps, lr=3e-3, **settings, **overrides_mesh)
    model = build_model(ModelParams(**shape), seed=0)
    calls = 0

    def objective(m, batch):
        nonlocal calls
        calls += 1
        if (args.kill_at and calls == args.kill_at
                and args.kill_rank in (None, int(os.environ.get("RANK", "0")))):
            os.kill(os.getpid(), signal.SIGKILL)
        loss, parts = cross_entropy_objective(m, batch)
        if args.inf_at and calls == args.inf_at:
            loss = loss + float("inf")
        return loss, parts

    dist = init_distributed()
    run = RunLog(Path(args.run), "train", "tiny", {"tp": tp.model_dump()}) if dist.is_main else None
    with run or contextlib.nullcontext():  # a failure is recorded in summary.json, as in a stage
        summary = train(model, TokenSplit.open(args.tokens, "train"),
                        TokenSplit.open(args.tokens, "val"), tp, run, special_id("<|pad|>"),
                        objective=objective, desc="tiny", run_params=tp.model_dump(mode="json"),
                        folder=Path(args.run))
        if args.export:
            export(model, tp, Path(args.run), dist.is_main)
        if tp.compile and dist.is_main:  # what torch.compile made of it, for the tests to check
            from torch._dynamo.utils import counters

            (Path(args.run) / "compiled.json").write_text(json.dumps(dict(counters["stats"])))
        if run is not None:
            run.finish(**summary)


def export(model, tp: TrainParams, folder: Path, is_main: bool) -> None:
    """The trained model's logits on the first validation batch, and the model saved whole."""
    import torch

    from lmpipe.data.batching import make_batches
    from lmpipe.data.tokenizer import build_byte_tokenizer
    from lmpipe.model.build import save_model
    from lmpipe.train.mesh import consolidated_state_dict

    tokens = Path(sys.argv[1])
    batch = make_batches(TokenSplit.open(tokens, "val"), tp.sampling, 4, tp.block_size, 0,
                         special_id("<|pad|>"), None, tp.loss_on)(0)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits
    whole = consolidated_state_dict(model) if tp.mesh is not None else None
    if is_main:
        torch.save({"input_ids": batch.input_ids, "logits": logits}, folder / "logits.pt")
        save_model(model, build_byte_tokenizer(), folder / "model", state_dict=whole)


if __name__ == "__main__":
    main()
