"""Linear probes on mamba, mamba2 and hawk read the same layer numbers as on llama (layer 0 the input of
block 1, lmpipe/model/hidden_states.py), right-padded batches give each text's own states, and
the eval stage writes a probe record per layer."""

import numpy as np
import pytest
import torch

from lmpipe.data.tokens import TokenSplit
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.evaluate import evaluate_model
from lmpipe.eval.linear_probe import last_token_states, probe_text
from lmpipe.eval.params import EvalParams
from lmpipe.model.build import build_model, save_model
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams

D_MODEL, LAYERS = 16, 2
# what block 1 reads from the token embedding: hawk (RecurrentGemma) scales it by sqrt(d_model)
EMBEDDING_SCALE = {"mamba": 1.0, "mamba2": 1.0, "hawk": D_MODEL ** 0.5}


def tiny(arch: str) -> torch.nn.Module:
    return build_model(ModelParams(arch=arch, d_model=D_MODEL, n_layers=LAYERS, d_state=4),
                       seed=0).eval()


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_padded_batches_read_each_texts_own_layers(arch, tokenizer):
    model = tiny(arch)
    texts = [probe_text(n, "major", "bio") for n in ("Ada Brown", "Bo Li", "Xavier Yamada")]
    batched = last_token_states(model, tokenizer, texts, batch_size=3)
    assert batched.shape == (3, LAYERS + 1, D_MODEL)
    for row, text in enumerate(texts):
        np.testing.assert_allclose(batched[row], last_token_states(model, tokenizer, [text])[0],
                                   atol=1e-5)
    last = tokenizer.encode("n", add_special_tokens=False)[0]  # layer 0: "Ada Brown"'s last byte
    embedding = model.get_input_embeddings().weight[last].detach() * EMBEDDING_SCALE[arch]
    np.testing.assert_allclose(batched[0, 0], embedding.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_the_eval_stage_probes_every_layer_of_a_recurrent_model(arch, tiny_world, tiny_tokens,
                                                                tokenizer, tmp_path):
    save_model(tiny(arch), tokenizer, tmp_path / "model")
    with PeopleDB(tiny_world / "people.duckdb") as db:
        records, _ = evaluate_model(tmp_path / "model", db, TokenSplit.open(tiny_tokens, "val"),
                                    EvalParams(linear_probe=True, linear_probe_people=20,
                                               batch_size=64), [], [],
                                    TrainParams(eval_batches=1), knowledge=False)
    probes = [r for r in records if r["metric"] == "linear_probe_accuracy"]
    assert {r["split"] for r in probes} == {f"layer{k}" for k in range(LAYERS + 1)}
