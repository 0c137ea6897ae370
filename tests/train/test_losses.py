"""The training loss runs the model on each row's predicting positions only (all but the last):
its logits at every loss position equal the whole row's forward, causal and prefix-LM."""

import pytest
import torch

from lmpipe.data.batching import LengthGroupedBatches
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.train.losses import masked_cross_entropy, predicting_logits
from tests.conftest import TINY_MODEL


@pytest.mark.parametrize("attention", ["causal", "prefix_lm"])
def test_predicting_positions_give_the_whole_rows_logits_where_the_loss_is(tiny_tokens, tokenizer,
                                                                           attention):
    model = build_model(TINY_MODEL.model_copy(update={"n_layers": 2}), 0).eval()
    batches = LengthGroupedBatches(TokenSplit.open(tiny_tokens, "train"), 6, 0,
                                   tokenizer.pad_token_id, attention=attention)
    checked = 0
    for step in range(3):
        batch = batches(step)
        with torch.no_grad():
            whole = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            cut = predicting_logits(model, batch)
        assert cut.shape[1] == batch.input_ids.shape[1] - 1
        targets = batch.target_mask > 0
        assert targets.any()
        torch.testing.assert_close(cut[targets], whole[:, :-1][targets], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(masked_cross_entropy(cut, batch),
                                   masked_cross_entropy(whole, batch), rtol=1e-5, atol=1e-5)
        checked += int(targets.sum())
    assert checked > 100
