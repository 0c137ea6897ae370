"""Teacher cache round trip, manifest checks, and the distillation loss against direct formulas."""

import numpy as np
import pytest
import torch

from lmpipe.batching import LengthGroupedBatches
from lmpipe.distill import forward_kl_topk, kd_objective
from lmpipe.teacher_cache import TeacherCache, write_cache
from lmpipe.tokenizer import VOCAB_SIZE
from lmpipe.tokens import TokenSplit


def _cache(model, tiny_tokens, tmp_path, k, tokenizer):
    split = TokenSplit.open(tiny_tokens, "train")
    write_cache(model, split, k, tokenizer.pad_token_id, tmp_path, batch_size=7,
                fingerprint={"teacher_sha256": "t", "tokenizer_sha256": "tok"})
    return split, TeacherCache.open(tmp_path, expect={"tokenizer_sha256": "tok"})


def test_round_trip_matches_the_teacher_at_every_position(tiny_model, tiny_tokens, tmp_path, tokenizer):
    split, cache = _cache(tiny_model, tiny_tokens, tmp_path, 5, tokenizer)
    assert cache.ids.shape == (split.n_tokens, 5) and cache.ids.dtype == np.uint16
    assert cache.logprobs.dtype == np.float16
    for doc in (0, len(split.docs) - 1):
        start, end = split.docs[doc]
        ids = torch.from_numpy(split.tokens[start:end].astype(np.int64))[None]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0], -1)
        top = logp.topk(5, -1)
        assert np.array_equal(cache.ids[start:end], top.indices.numpy())
        np.testing.assert_allclose(cache.logprobs[start:end], top.values.numpy(), atol=5e-3)


def test_manifest_mismatch_and_bad_k_are_refused(tiny_model, tiny_tokens, tmp_path, tokenizer):
    _cache(tiny_model, tiny_tokens, tmp_path, 3, tokenizer)
    with pytest.raises(ValueError, match="tokenizer_sha256 is tok, expected other"):
        TeacherCache.open(tmp_path, expect={"tokenizer_sha256": "other"})
    with pytest.raises(ValueError, match="top_k = 999"):
        write_cache(tiny_model, TokenSplit.open(tiny_tokens, "train"), 999, 0, tmp_path / "x", 4, {})


def test_forward_kl_is_zero_for_identical_and_equals_full_kl_when_k_is_vocab():
    torch.manual_seed(0)
    teacher_logits, student_logits = torch.randn(6, 11), torch.randn(6, 11)
    t_logp = torch.log_softmax(teacher_logits, -1)
    ids = torch.arange(11).expand(6, 11)
    assert forward_kl_topk(teacher_logits, ids, t_logp, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    for temperature in (1.0, 2.0):
        p = torch.softmax(teacher_logits / temperature, -1)
        q = torch.log_softmax(student_logits / temperature, -1)
        direct = (p * (p.log() - q)).sum(-1).mean() * temperature**2
        got = forward_kl_topk(student_logits, ids, t_logp, temperature)
        assert got.item() == pytest.approx(direct.item(), rel=1e-5)


def test_distilling_from_a_full_cache_of_itself_has_zero_kd(tiny_model, tiny_tokens, tmp_path, tokenizer):
    split, cache = _cache(tiny_model, tiny_tokens, tmp_path, VOCAB_SIZE, tokenizer)
    batch = LengthGroupedBatches(split, 8, 0, tokenizer.pad_token_id)(0)
    with torch.no_grad():
        loss, parts = kd_objective(cache, 1.0, 1.0)(tiny_model, batch)
    # fp16 log-probs are the only difference between teacher and student here.
    assert parts["kd_loss"].item() / batch.n_targets == pytest.approx(0.0, abs=1e-3)
    assert parts["ce_loss"].item() / batch.n_targets > 4.0  # untrained: far from the labels
    assert loss.item() == pytest.approx(parts["kd_loss"].item())  # kd_weight = 1
