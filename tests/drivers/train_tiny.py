"""Test driver: train a tiny model on a token folder, optionally SIGKILL itself mid-run.

usage: python train_tiny.py TOKENS_DIR RUN_DIR STEPS [--kill-at N] [--inf-at N] [--set key=value ...]
Run it under `torchrun` for data parallelism; it writes RUN_DIR/summary.json like a stage does.
"""

import argparse
import contextlib
import os
import signal
from pathlib import Path

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokenizer import special_id
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams
from lmpipe.train.distributed import init_distributed
from lmpipe.train.loop import train
from lmpipe.train.losses import cross_entropy_objective


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tokens")
    parser.add_argument("run")
    parser.add_argument("steps", type=int)
    parser.add_argument("--kill-at", type=int, default=0, help="SIGKILL on this objective call")
    parser.add_argument("--inf-at", type=int, default=0,
                        help="make the loss of this objective call infinite (a forced divergence)")
    parser.add_argument("--set", nargs="*", default=[])
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    # checkpoint_every: TrainParams' default unless set
    tp = TrainParams(steps=args.steps, batch_size=int(overrides.pop("batch_size", 8)),
                     grad_accum=int(overrides.pop("grad_accum", 1)), warmup_steps=3, lr=3e-3,
                     log_every=5, eval_every=10, threads=1,
                     **{k: int(v) for k, v in overrides.items()})
    model = build_model(ModelParams(d_model=16, n_layers=1, n_heads=2), seed=0)
    calls = 0

    def objective(m, batch):
        nonlocal calls
        calls += 1
        if args.kill_at and calls == args.kill_at:
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
        if run is not None:
            run.finish(**summary)


if __name__ == "__main__":
    main()
