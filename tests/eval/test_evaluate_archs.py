"""The eval stage's per-model scoring (validation loss, recall and tool accuracy through the
generation loop) runs on Mamba, Mamba-2 and Hawk directories as it does on Llama's."""

import pytest

from lmpipe.data.tokens import TokenSplit
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.eval.evaluate import evaluate_model, headline
from lmpipe.eval.params import EvalParams
from lmpipe.model.build import build_model, save_model
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_a_recurrent_model_is_scored(arch, tiny_world, tiny_tokens, tokenizer, tmp_path):
    save_model(build_model(ModelParams(arch=arch, d_model=16, n_layers=1, d_state=4), seed=0),
               tokenizer, tmp_path / "model")
    with PeopleDB(tiny_world / "people.duckdb") as db:
        people = sample_people(db, "train", 2, 0)
        records, transcripts = evaluate_model(
            tmp_path / "model", db, TokenSplit.open(tiny_tokens, "val"),
            EvalParams(batch_size=8, max_new_tokens=4), people, [], TrainParams(), knowledge=False)
    table = headline(records)
    assert table["val_loss"] > 0 and 0.0 == table["tool_accuracy_trained"]  # an untrained model
    assert sum(len(t) for t in transcripts.values()) == 2 * 2 * 6  # with and without the tool
