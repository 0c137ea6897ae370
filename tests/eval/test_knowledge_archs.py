"""Knowledge bits on recurrent models: candidates are scored by a whole forward of context +
continuation (no cache reuse), and that gives what scoring each sequence alone does; llama keeps
its KV-cached path."""

import pytest
import torch

from lmpipe.data.tokens import TokenSplit
from lmpipe.data.tooldb import PeopleDB, sample_people
from lmpipe.eval import knowledge
from lmpipe.eval.evaluate import evaluate_model
from lmpipe.eval.knowledge import continuation_logprobs
from lmpipe.eval.params import EvalParams
from lmpipe.model.build import build_model, save_model
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams

GROUPS = [([256, 2, 3], [[10, 11], [12], [13, 14, 15]]), ([256, 5], [[16, 17, 18, 19]]),
          ([256, 7, 8, 9, 10, 11], [[20], [21, 22]])]


def tiny(arch: str) -> torch.nn.Module:
    return build_model(ModelParams(arch=arch, d_model=16, n_layers=2, d_state=4, n_heads=2),
                       seed=0).eval()


def one_at_a_time(model, groups) -> list[list[float]]:
    """The reference: each context + continuation alone, unpadded, summed in float64."""
    out = []
    for head, tails in groups:
        row = []
        for tail in tails:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([head + tail])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            row.append(sum(logp[len(head) - 1 + j, t].item() for j, t in enumerate(tail)))
        out.append(row)
    return out


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_recurrent_scores_equal_each_sequence_alone(arch, tokenizer):
    model = tiny(arch)
    direct = one_at_a_time(model, GROUPS)
    for batch_size in (1, 3, 256):
        got = continuation_logprobs(model, GROUPS, tokenizer.pad_token_id, batch_size)
        assert [len(r) for r in got] == [3, 1, 2]
        for mine, theirs in zip(got, direct):
            assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("arch, cached", [("llama", True), ("mamba", False), ("mamba2", False),
                                            ("hawk", False)])
def test_only_attention_models_reuse_the_context_cache(arch, cached, tokenizer, monkeypatch):
    calls = []
    real = knowledge._cached_logprobs
    monkeypatch.setattr(knowledge, "_cached_logprobs",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    continuation_logprobs(tiny(arch), GROUPS, tokenizer.pad_token_id)
    assert bool(calls) == cached


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_the_eval_stage_measures_knowledge_bits_of_a_recurrent_model(arch, tiny_world,
                                                                     tiny_tokens, tokenizer,
                                                                     tmp_path):
    save_model(tiny(arch), tokenizer, tmp_path / "model")
    with PeopleDB(tiny_world / "people.duckdb") as db:
        people = sample_people(db, "train", 1, 0)
        records, _ = evaluate_model(
            tmp_path / "model", db, TokenSplit.open(tiny_tokens, "val"),
            EvalParams(batch_size=64, max_new_tokens=2), people, [], TrainParams(),
            knowledge=True)
    bits = [r for r in records if r["metric"] == "knowledge_bits"]
    assert len(bits) == 7 and all(r["value"] >= 0 and r["n"] == 1 for r in bits)
    assert any(r["metric"] == "bits_per_param" for r in records)
