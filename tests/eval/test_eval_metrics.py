"""Eval metrics that must mean what they say: tool-call rates parse the query against the question
asked; bits per byte comes from the validation loss's own targets and their text's bytes."""

import math

import numpy as np
import pytest
import torch

from lmpipe.core import protocol
from lmpipe.data.batching import Batch, LengthGroupedBatches, make_batches
from lmpipe.data.tokens import TokenSplit
from lmpipe.eval.evaluate import evaluate_model, tool_call_records
from lmpipe.eval.generate import Exchange
from lmpipe.model.build import build_model
from lmpipe.eval.params import EvalParams
from lmpipe.train.params import TrainParams
from lmpipe.train.losses import evaluate_split, target_bytes
from tests.conftest import TINY_MODEL


def _exchange(query, reply="Paris"):
    return Exchange(prompt="", query=query, db_reply=reply, answer=reply or "")


def test_a_call_is_valid_only_for_the_asked_person_and_attribute():
    asked = ("birth_city", "Ada Brown", "Paris")
    cases = [  # (query the model wrote, database reply)
        ("FIND birth_city FOR Ada Brown", "Paris"),          # valid
        ("FIND birth_city FOR Bob Stone", "Lyon"),           # another person, a real reply
        ("FIND employer FOR Ada Brown", "Acme"),             # another attribute, a real reply
        ("FIND employer FOR Bob Stone", "Initech"),          # both wrong
        ("FIND birth_city FROM Ada Brown", "ERROR: malformed query"),  # not in the grammar
        ("FIND shoe_size FOR Ada Brown", "ERROR: unknown attribute"),  # not in the whitelist
        (None, None),                                        # no call at all
        (" FIND birth_city FOR Ada Brown ", "Paris"),        # valid (surrounding space)
    ]
    questions = [asked] * len(cases)
    exchanges = [_exchange(q, r) for q, r in cases]
    rates = {r["metric"]: r["value"] for r in tool_call_records("heldout", questions, exchanges)}
    n = len(cases)
    assert rates == {"tool_call_rate": 2 / n, "tool_call_wrong_person": 2 / n,
                     "tool_call_wrong_attribute": 2 / n}
    # the old count (any non-error reply) called 5 of these valid
    assert sum(r is not None and not r.startswith("ERROR") for _, r in cases) == 5
    records = tool_call_records("heldout", questions, exchanges)
    assert all(r["split"] == "heldout" and r["n"] == n and r["attribute"] is None
               for r in records)


def test_target_bytes_skip_special_tokens_and_keep_characters_whole(tokenizer):
    # a tool turn the model writes: "<|call|>FIND major FOR Zoë Ng<|end|>" (ë is 2 bytes)
    text = f"{protocol.ASSISTANT}{protocol.CALL}FIND major FOR Zoë Ng{protocol.END}"
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])  # a piece: no BOS
    written = torch.ones(1, ids.size(1) - 1)  # every token after <|assistant|> is a target
    batch = Batch(ids, written, torch.arange(ids.size(1))[None])
    assert target_bytes(tokenizer, batch) == len("FIND major FOR Zoë Ng".encode("utf-8")) == 22
    written[0, :6] = 0  # "<|call|>FIND " becomes given: its 5 bytes no longer count
    assert target_bytes(tokenizer, batch) == 17


def test_bits_per_byte_comes_from_the_same_batches_as_the_loss(tiny_tokens, tokenizer):
    model = build_model(TINY_MODEL, 0)
    split = TokenSplit.open(tiny_tokens, "val")
    batches = LengthGroupedBatches(split, 8, 0, tokenizer.pad_token_id)
    first = evaluate_split(model, batches, 8, max_batches=1, tokenizer=tokenizer)
    whole = evaluate_split(model, batches, 8, tokenizer=tokenizer)
    # byte tokenizer: a target's bytes are its own byte, 0 for a special token (ids >= 256)
    batch = next(batches.sequential(8))
    targets = batch.input_ids[:, 1:][batch.target_mask > 0]
    assert first.bytes == int((targets < 256).sum())
    assert (targets >= 256).any()  # <|end|> and <|call|> are targets, and count 0 bytes
    assert first.targets == batch.n_targets < whole.targets
    assert first.bits_per_byte == pytest.approx(first.nats / (first.bytes * math.log(2)))
    assert first.loss == pytest.approx(first.nats / first.targets)
    mask = np.asarray(split.mask) == 1
    tokens = np.asarray(split.tokens)
    assert whole.bytes == int((tokens[mask] < 256).sum())  # every target once, specials 0 bytes


def test_eval_val_bpb_uses_the_eval_batches_of_the_loss(tiny_tokens, tokenizer, tmp_path):
    model = build_model(TINY_MODEL, 0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    split = TokenSplit.open(tiny_tokens, "val")
    tp = TrainParams(eval_batches=1)
    records, _ = evaluate_model(tmp_path / "model", None, split, EvalParams(), [], [], tp)
    figures = {r["metric"]: r["value"] for r in records}
    expected = evaluate_split(model.eval(), make_batches(
        split, tp.sampling, 64, tp.block_size, 0, tokenizer.pad_token_id, None, tp.loss_on),
        64, 1, tokenizer)
    assert figures["val_loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert figures["val_bpb"] == pytest.approx(expected.bits_per_byte, rel=1e-6)
    # nats per target over bytes per target, in bits: bpb * ln 2 = loss * targets / bytes
    assert figures["val_bpb"] * math.log(2) == pytest.approx(
        figures["val_loss"] * expected.targets / expected.bytes, rel=1e-6)
