"""Training options end to end: prefix-LM mask, activation checkpointing, profiler trace."""

import json

import pytest
import torch

from lmpipe.core.run_folder import RunLog
from lmpipe.data.attention_masks import prefix_lm_mask
from lmpipe.data.batching import LengthGroupedBatches
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.train.params import TrainParams
from lmpipe.train.loop import train
from lmpipe.train.losses import evaluate_loss
from tests.conftest import TINY_MODEL


def test_mask_on_a_hand_made_sequence():
    # tokens: g g w w g g w  (g = given, w = written by the model) + 1 padding position
    written = torch.tensor([[0, 0, 1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    target_mask = written[:, 1:].float()
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, -1]])
    allowed = prefix_lm_mask(target_mask, positions)[0, 0]
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    expected = causal.clone()
    expected[0, 1] = True  # first span {0, 1} is bidirectional
    expected[4, 5] = True  # second span {4, 5} too
    expected[:, 7] = False  # nobody attends to padding
    expected[7, 7] = True  # ...but the padding row keeps itself (no empty softmax rows)
    assert torch.equal(allowed, expected)


def test_no_prediction_sees_its_target(tiny_tokens, tokenizer):
    split = TokenSplit.open(tiny_tokens, "train")
    batch = LengthGroupedBatches(split, 6, 0, tokenizer.pad_token_id, attention="prefix_lm")(0)
    allowed = batch.attention_mask[:, 0]
    # position t predicts token t+1: where t+1 is a target, t must not see t+1 or anything later
    for row in range(allowed.shape[0]):
        for t in torch.nonzero(batch.target_mask[row]).flatten().tolist():
            assert not allowed[row, t, t + 1:].any()


def test_prefix_lm_trains_and_changes_the_function(tiny_tokens, tokenizer, tmp_path):
    # two layers: with one, every loss position's attention is the same under both masks (the
    # last given token of a span sees exactly its causal past), so the loss could not change
    model = build_model(TINY_MODEL.model_copy(update={"n_layers": 2}), 0)
    split = TokenSplit.open(tiny_tokens, "val")
    causal = evaluate_loss(model, LengthGroupedBatches(split, 8, 0, tokenizer.pad_token_id))
    prefix = evaluate_loss(model, LengthGroupedBatches(split, 8, 0, tokenizer.pad_token_id,
                                                       attention="prefix_lm"))
    assert causal != prefix  # the mask reaches the attention layers
    tp = TrainParams(steps=60, batch_size=8, lr=1e-2, warmup_steps=5, log_every=20,
                     eval_every=60, attention="prefix_lm")
    with RunLog(tmp_path, "train", "prefix", {}) as run:
        summary = train(model, TokenSplit.open(tiny_tokens, "train"), split, tp, run,
                        tokenizer.pad_token_id)
    assert summary["final_val_loss"] < 0.8 * summary["initial_val_loss"]


def _train_with_and_without(option: str, tiny_tokens, tokenizer, steps: int) -> list[dict]:
    """Two identical tiny runs but for `option` (off, then on)."""
    results = []
    for enabled in (False, True):
        tp = TrainParams(steps=steps, batch_size=8, warmup_steps=1, log_every=steps,
                         eval_every=steps, **{option: enabled})
        results.append(train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
                             TokenSplit.open(tiny_tokens, "val"), tp, None, tokenizer.pad_token_id))
    return results


def test_gradient_checkpointing_gives_the_same_training(tiny_tokens, tokenizer):
    eager, checkpointed = _train_with_and_without("grad_checkpointing", tiny_tokens, tokenizer, 6)
    assert abs(eager["final_val_loss"] - checkpointed["final_val_loss"]) < 1e-5


def test_profile_window_writes_a_trace_into_the_run_folder(tiny_tokens, tokenizer, tmp_path):
    tp = TrainParams(steps=4, batch_size=4, log_every=2, eval_every=4, profile_steps=[1, 3])
    with RunLog(tmp_path, "train", "traced", {}) as run:
        train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
              TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    traces = list(tmp_path.rglob("trace.json"))
    # the matrix products: torch's, or oneDNN's when train.cpu_linear routes them there
    assert len(traces) == 1 and any(op in traces[0].read_text()
                                    for op in ("aten::mm", "mkldnn::_linear_pointwise"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert records[0]["flops_per_token"] > 0 and records[0]["peak_flops"] > 0
    assert {"time_data_s", "time_forward_backward_s", "time_optimizer_s", "mfu", "rss_mb",
            "eval_rss_mb"} <= set(records[-1])


def test_compiled_training_matches_eager(tiny_tokens, tokenizer):
    eager, compiled = _train_with_and_without("compile", tiny_tokens, tokenizer, 3)
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-4)


def test_compiled_training_traces_the_loss_in_the_forwards_graph(tiny_tokens, tokenizer,
                                                                 monkeypatch):
    """With train.compile the plain objective is one graph from token ids to the loss: the
    cross-entropy is traced with the embedding, not run eagerly after a compiled forward."""
    graphs: list[set[str]] = []
    real_compile = torch.compile

    def spy(gm: torch.fx.GraphModule, example_inputs):
        graphs.append({getattr(node.target, "__name__", str(node.target)) for node in gm.graph.nodes})
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=spy, **kw))
    tp = TrainParams(steps=2, batch_size=4, warmup_steps=1, log_every=2, eval_every=2,
                     compile=True)
    train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
          TokenSplit.open(tiny_tokens, "val"), tp, None, tokenizer.pad_token_id)
    assert any({"embedding", "cross_entropy"} <= names for names in graphs), graphs


def test_eval_runs_on_its_own_schedule_whatever_log_every_is(tiny_tokens, tokenizer, tmp_path):
    """eval_every = 2 with log_every = 3 over 7 steps: val_loss at 0, 2, 4, 6 and 7 (the end),
    training records at 3, 6 and 7; an eval-only step logs val_loss without training figures,
    and the training records' windows are those of a run without those evals."""
    tp = TrainParams(steps=7, batch_size=4, warmup_steps=1, log_every=3, eval_every=2)
    with RunLog(tmp_path / "split", "train", "split", {}) as run:
        summary = train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
                        TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 2, 4, 6, 7]
    assert [r["step"] for r in records if "loss" in r] == [3, 6, 7]
    assert "loss" not in next(r for r in records if r["step"] == 2)
    assert summary["final_val_loss"] == records[-1]["val_loss"]
    # the same run with evals only at the end logs the same training losses
    rare = tp.model_copy(update={"eval_every": 7})
    with RunLog(tmp_path / "rare", "train", "rare", {}) as run:
        train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
              TokenSplit.open(tiny_tokens, "val"), rare, run, tokenizer.pad_token_id)
    baseline = [json.loads(line) for line in (tmp_path / "rare" / "metrics.jsonl").open()]
    assert [r["loss"] for r in records if "loss" in r] == \
        pytest.approx([r["loss"] for r in baseline if "loss" in r], abs=1e-6)


def test_the_loop_trains_with_muon(tiny_tokens, tokenizer, tmp_path):
    # Muon on the matrices, AdamW on the rest, driven by the loop's schedule (lmpipe/train/muon.py)
    tp = TrainParams(steps=40, batch_size=8, lr=1e-2, warmup_steps=5, log_every=20,
                     eval_every=40, optimizer="muon")
    with RunLog(tmp_path, "train", "muon", {}) as run:
        summary = train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
                        TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    assert summary["final_val_loss"] < 0.8 * summary["initial_val_loss"]


def test_bf16_trains_on_cpu_with_bf16_matmuls_and_fp32_weights(tiny_tokens, tokenizer, tmp_path):
    """precision: bf16 autocasts the training forward on CPU (it used to be GPU only, a CPU run
    silently staying fp32): the linear layers compute in bf16, the weights and the loss stay fp32,
    and the run learns about as far as the fp32 one."""
    seen: set[torch.dtype] = set()
    results = {}
    for precision in ("fp32", "bf16"):
        model = build_model(TINY_MODEL, 0)
        seen.clear()
        hook = model.lm_head.register_forward_hook(
            lambda module, args, out: seen.add(out.dtype) if torch.is_grad_enabled() else None)
        tp = TrainParams(steps=60, batch_size=8, lr=1e-2, warmup_steps=5, log_every=20,
                         eval_every=60, precision=precision, device="cpu")
        with RunLog(tmp_path / precision, "train", precision, {}) as run:
            results[precision] = train(model, TokenSplit.open(tiny_tokens, "train"),
                                       TokenSplit.open(tiny_tokens, "val"), tp, run,
                                       tokenizer.pad_token_id)
        hook.remove()
        assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert all(p.dtype == torch.float32 for p in model.parameters())
    fp32, bf16 = results["fp32"], results["bf16"]
    assert bf16["final_val_loss"] < 0.8 * bf16["initial_val_loss"]
    assert bf16["final_val_loss"] == pytest.approx(fp32["final_val_loss"], rel=0.1)
    assert bf16["final_val_loss"] != fp32["final_val_loss"]  # it did compute in another precision
