"""The teacher cache: compressed round trip, shards, manifest checks, reconstruction."""

import json

import numpy as np
import pytest
import torch

from lmpipe.data.tokenizer import VOCAB_SIZE
from lmpipe.data.tokens import TokenSplit
from lmpipe.distill.cache.format import LOGPROB_STEP, CacheSpec, cache_bytes, id_dtype
from lmpipe.distill.cache.read import TeacherCache, reconstruct
from lmpipe.distill.cache.write import write_cache

FINGERPRINT = {"teacher_sha256": "t", "tokenizer_sha256": "tok"}


def _cache(model, tiny_tokens, folder, tokenizer, **spec):
    split = TokenSplit.open(tiny_tokens, "train")
    write_cache(model, split, CacheSpec(**spec), tokenizer.pad_token_id, folder, batch_size=7,
                fingerprint=FINGERPRINT)
    return split, TeacherCache.open(folder, expect={"tokenizer_sha256": "tok"})


def _teacher_logprobs(model, split, doc):
    start, end = split.docs[doc]
    ids = torch.from_numpy(split.tokens[start:end].astype(np.int64))[None]
    with torch.no_grad():  # the last token has no next token: no row
        return start, end - 1, torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)


def test_ids_take_the_narrowest_integer_width():
    assert id_dtype(256) == np.uint8 and id_dtype(257) == np.uint16
    assert id_dtype(49_161) == np.uint16 and id_dtype(65_537) == np.uint32


@pytest.mark.parametrize("fmt,atol", [("u8", LOGPROB_STEP / 2 + 1e-6), ("fp16", 5e-3), ("fp32", 1e-5)])
def test_round_trip_matches_the_teacher_at_every_position(fmt, atol, tiny_model, tiny_tokens,
                                                          tmp_path, tokenizer):
    # three shards of 500 positions: reads must stitch them back together
    split, cache = _cache(tiny_model, tiny_tokens, tmp_path, tokenizer, top_k=5, logprobs=fmt,
                          shard_positions=500, hidden_layers=(0, 1), attention_layers=(1,))
    assert len(cache.manifest["shards"]) == -(-split.n_tokens // 500) > 1
    for doc in (0, len(split.docs) // 2, len(split.docs) - 1):
        start, end, logp = _teacher_logprobs(tiny_model, split, doc)
        rows = cache.rows(np.arange(start, end), hidden_layers=(1,))
        top = logp.topk(5, -1)
        assert torch.equal(rows.ids, top.indices)
        torch.testing.assert_close(rows.logprobs, top.values, atol=atol, rtol=0)
        rest = torch.log1p(-top.values.exp().sum(-1).clamp(max=1 - 1e-7))
        torch.testing.assert_close(rows.log_missing, rest, atol=2e-2, rtol=1e-2)
        ids = torch.from_numpy(split.tokens[start:end + 1].astype(np.int64))[None]
        with torch.no_grad():
            out = tiny_model(input_ids=ids, output_hidden_states=True, output_attentions=True)
        torch.testing.assert_close(rows.hidden[1], out.hidden_states[1][0, :-1], atol=2e-3,
                                   rtol=2e-3)  # fp16
        attention = cache.rows(np.arange(start, end), attention_layers=(1,)).attention[1]
        expected = out.attentions[0][0].mean(0)[:-1, :-1]  # rows: keys 0..c of the document
        torch.testing.assert_close(attention, expected, atol=1e-3, rtol=1e-3)
    # rows come back in the order asked, across shard boundaries
    picks = np.array([1200, 3, 499, 500, 999])
    shuffled = cache.rows(picks)
    for i, position in enumerate(picks):
        assert torch.equal(shuffled.ids[i], cache.rows(np.array([position])).ids[0])


def test_k32_budget_fits_128_bytes_per_token(tiny_model, tiny_tokens, tmp_path, tokenizer):
    _, cache = _cache(tiny_model, tiny_tokens, tmp_path, tokenizer, top_k=32)
    # u8 log-probs + uint16 ids + an fp16 missing mass = 32 + 64 + 2 bytes (+ .npy headers)
    assert cache.manifest["ids_dtype"] == "uint16" and cache.manifest["logprobs"] == "u8"
    assert 98 <= cache.manifest["bytes_per_token"] <= 99
    assert cache_bytes(tmp_path, cache.manifest) / cache.manifest["positions"] <= 128


def test_the_tail_is_stored_tempered_for_the_distill_temperature(tiny_model, tiny_tokens, tmp_path,
                                                                 tokenizer):
    """At T != 1 and k < V each shard gets a `tail` column: log sum_{j not in top-k} p_j^(1/T),
    exact (up to its fp16 storage); at T = 1 or k = V there is nothing to add."""
    split, cache = _cache(tiny_model, tiny_tokens, tmp_path / "t2", tokenizer, top_k=5,
                          temperature=2.0)
    assert cache.manifest["tail_model"] == "exact" and cache.manifest["tail_temperature"] == 2.0
    assert all("tail" in shard for shard in cache.manifest["shards"])
    start, end, logp = _teacher_logprobs(tiny_model, split, 0)
    rows = cache.rows(np.arange(start, end))
    top = logp.topk(5, -1)
    expected = (logp.scatter(-1, top.indices, float("-inf")) / 2.0).logsumexp(-1)
    torch.testing.assert_close(rows.log_tail, expected, atol=5e-3, rtol=1e-3)  # fp16
    # a 260-token tail tempered is far more than its mass tempered as one token
    assert (rows.log_tail > rows.log_missing / 2.0 + 1.0).all()
    _, plain = _cache(tiny_model, tiny_tokens, tmp_path / "t1", tokenizer, top_k=5)
    assert plain.manifest["tail_temperature"] == 1.0 and plain.rows(np.arange(3)).log_tail is None
    assert not any("tail" in shard for shard in plain.manifest["shards"])
    extra = cache.manifest["bytes_per_token"] - plain.manifest["bytes_per_token"]
    assert 2.0 <= extra <= 2.1  # one fp16 per position (+ .npy headers)
    _, whole = _cache(tiny_model, tiny_tokens, tmp_path / "kv", tokenizer, top_k=VOCAB_SIZE,
                      logprobs="fp32", temperature=2.0)
    assert not any("tail" in shard for shard in whole.manifest["shards"])  # an empty tail


def test_reconstruction_is_exact_with_the_whole_vocabulary(tiny_model, tiny_tokens, tmp_path, tokenizer):
    split, cache = _cache(tiny_model, tiny_tokens, tmp_path, tokenizer, top_k=VOCAB_SIZE,
                          logprobs="fp32")
    start, end, logp = _teacher_logprobs(tiny_model, split, 1)
    rebuilt = reconstruct(cache.rows(np.arange(start, end)), VOCAB_SIZE)
    torch.testing.assert_close(rebuilt, logp, atol=1e-5, rtol=1e-5)
    # a truncated cache spreads the missing mass evenly: still a distribution
    _, small = _cache(tiny_model, tiny_tokens, tmp_path / "k4", tokenizer, top_k=4)
    approx = reconstruct(small.rows(np.arange(start, end)), VOCAB_SIZE)
    torch.testing.assert_close(approx.exp().sum(-1), torch.ones(end - start), atol=1e-5, rtol=0)
    kl = (logp.exp() * (logp - approx)).sum(-1)
    assert (kl > 0).all()  # an untrained teacher's tail is far from uniform-in-the-tail


def test_manifest_mismatch_bad_k_and_missing_shards_are_refused(tiny_model, tiny_tokens, tmp_path,
                                                                tokenizer):
    _cache(tiny_model, tiny_tokens, tmp_path, tokenizer, top_k=3)
    with pytest.raises(ValueError, match="tokenizer_sha256 is tok, expected other"):
        TeacherCache.open(tmp_path, expect={"tokenizer_sha256": "other"})
    split = TokenSplit.open(tiny_tokens, "train")
    with pytest.raises(ValueError, match="top_k = 999"):
        write_cache(tiny_model, split, CacheSpec(999), 0, tmp_path / "x", 4, {})
    with pytest.raises(ValueError, match="hidden_layers: layer 5 does not exist"):
        write_cache(tiny_model, split, CacheSpec(3, hidden_layers=(5,)), 0, tmp_path / "y", 4, {})
    cache = TeacherCache.open(tmp_path)
    with pytest.raises(ValueError, match=r"hidden states of teacher layer\(s\) \[1\] are not cached"):
        cache.rows(np.arange(3), hidden_layers=(1,))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / manifest["shards"][0]["logprobs"]).unlink()
    with pytest.raises(FileNotFoundError, match="shard file listed"):
        TeacherCache.open(tmp_path)
    manifest["format_version"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version 1, expected 3; rebuild the cache"):
        TeacherCache.open(tmp_path)


def test_rebuilding_an_unchanged_cache_writes_the_same_bytes(tiny_model, tiny_tokens, tmp_path,
                                                             tokenizer):
    # DVC hashes the folder: timings in it would make every rebuild look like a new cache and
    # rerun distill and quantize on the same teacher outputs
    split = TokenSplit.open(tiny_tokens, "train")
    returned = [write_cache(tiny_model, split, CacheSpec(top_k=4, shard_positions=500),
                            tokenizer.pad_token_id, tmp_path / name, 7, FINGERPRINT)
                for name in ("a", "b")]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 3 and "manifest.json" in {f.name for f in files}
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert returned[0]["tokens_per_s"] > 0  # the run's speed is returned, not written
    assert "tokens_per_s" not in json.loads((tmp_path / "a" / "manifest.json").read_text())
