"""Mamba, Mamba-2 and Hawk train through lmpipe's loop on whole documents (right-padded, causal: a
recurrent model never sees the padding after a document), and their validation loss falls."""

import pytest

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.model.params import ModelParams
from lmpipe.train.loop import train
from lmpipe.train.params import TrainParams


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_a_recurrent_model_trains(arch, tiny_tokens, tokenizer, tmp_path):
    model = build_model(ModelParams(arch=arch, d_model=16, n_layers=1, d_state=4), seed=0)
    tp = TrainParams(steps=20, batch_size=8, lr=2e-2, warmup_steps=2, log_every=10, eval_every=20)
    with RunLog(tmp_path, "train", arch, {}) as run:
        summary = train(model, TokenSplit.open(tiny_tokens, "train"),
                        TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    assert summary["final_val_loss"] < 0.85 * summary["initial_val_loss"]
    # mamba trained on mamba.py's parallel scan (lmpipe/model/mamba.py)
    assert [m.use_mambapy for m in model.modules() if hasattr(m, "use_mambapy")] == \
        ([True] if arch == "mamba" else [])
