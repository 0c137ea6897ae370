"""wandb in offline mode mirrors the metrics without any network."""

import os

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.train.params import TrainParams
from lmpipe.train.loop import train
from tests.conftest import TINY_MODEL


def test_wandb_offline_writes_a_local_run(tiny_tokens, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    tp = TrainParams(steps=4, batch_size=4, log_every=2, eval_every=4, wandb="offline")
    with RunLog(tmp_path / "run", "train", "tiny", {}) as run:
        train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
              TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(name.endswith(".wandb") and os.path.getsize(runs[0] / name) > 0
               for name in os.listdir(runs[0]))
