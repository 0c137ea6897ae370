"""Artifacts carry content hashes and readers check them; a tokenizer's identity ignores padding."""

import json
import re
import shutil

import numpy as np
import pytest

from lmpipe.core import artifacts
from lmpipe.core.artifacts import ArtifactError, file_sha256, tokenizer_identity
from lmpipe.data.tokenizer import build_byte_tokenizer
from lmpipe.data.tokens import TokenSplit
from lmpipe.distill.cache.format import CacheSpec, model_fingerprint
from lmpipe.distill.cache.read import TeacherCache
from lmpipe.distill.cache.write import write_cache
from lmpipe.eval.generate import Sampling, generate
from lmpipe.model.build import save_model

FINGERPRINT = {"teacher_sha256": "t", "tokenizer_sha256": "tok"}


def _cache(model, tiny_tokens, folder, tokenizer) -> dict:
    split = TokenSplit.open(tiny_tokens, "train")
    return write_cache(model, split, CacheSpec(top_k=3, shard_positions=2000),
                       tokenizer.pad_token_id, folder, batch_size=7, fingerprint=FINGERPRINT)


def _refused(path, rebuild: str):
    """pytest.raises for an ArtifactError naming `path` and the rebuild command."""
    return pytest.raises(ArtifactError, match=rf"^{re.escape(str(path))}: .*{re.escape(rebuild)}")


def test_manifest_records_every_shard_files_sha256(tiny_model, tiny_tokens, tmp_path, tokenizer):
    manifest = _cache(tiny_model, tiny_tokens, tmp_path, tokenizer)
    files = [f for shard in manifest["shards"] for k, f in shard.items() if k not in ("start", "end")]
    assert len(manifest["shards"]) > 1 and len(files) == 3 * len(manifest["shards"])
    assert manifest["sha256"] == {f: file_sha256(tmp_path / f) for f in files}
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["sha256"] == manifest["sha256"] and on_disk["format_version"] == 3


def test_a_same_size_overwrite_of_a_shard_is_refused_naming_it(tiny_model, tiny_tokens, tmp_path,
                                                               tokenizer):
    manifest = _cache(tiny_model, tiny_tokens, tmp_path, tokenizer)
    shard = tmp_path / manifest["shards"][1]["logprobs"]
    size = shard.stat().st_size
    header = 128  # keep the .npy header valid: numpy alone would read the garbage happily
    data = bytearray(shard.read_bytes())
    data[header:] = np.random.default_rng(0).integers(0, 256, size - header, np.uint8).tobytes()
    shard.write_bytes(bytes(data))
    assert shard.stat().st_size == size and np.load(shard, mmap_mode="r").shape[1] == 3
    with _refused(shard, "rebuild it: dvc repro -f teacher_cache") as info:
        TeacherCache.open(tmp_path)
    assert "does not match its recorded sha256" in str(info.value)


def test_a_truncated_shard_is_refused_naming_it(tiny_model, tiny_tokens, tmp_path, tokenizer):
    manifest = _cache(tiny_model, tiny_tokens, tmp_path, tokenizer)
    shard = tmp_path / manifest["shards"][0]["ids"]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) - 100])
    with _refused(shard, "rebuild it: dvc repro -f teacher_cache") as info:
        TeacherCache.open(tmp_path)
    assert "mmap length" not in str(info.value)


def test_a_flipped_byte_in_the_train_tokens_is_refused_naming_it(tiny_tokens, tmp_path):
    folder = tmp_path / "tokens"
    shutil.copytree(tiny_tokens, folder)
    TokenSplit.open(folder, "train")  # verified once: the in-process cache must not hide a change
    path = folder / "train.tokens.bin"
    data = bytearray(path.read_bytes())
    data[1001] ^= 0x01  # one token id off by one: a plausible token, silently wrong
    path.write_bytes(bytes(data))
    with _refused(path, "rebuild it: dvc repro -f tokenize") as info:
        TokenSplit.open(folder, "train")
    assert "does not match its recorded sha256" in str(info.value)
    TokenSplit.open(folder, "val")  # the other split is intact


def test_token_meta_without_hashes_is_refused_as_older(tiny_tokens, tmp_path):
    folder = tmp_path / "tokens"
    shutil.copytree(tiny_tokens, folder)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["sha256"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"meta.json: written by an older lmpipe.*rebuild it"):
        TokenSplit.open(folder, "train")


def test_opening_a_verified_split_again_hashes_nothing(tiny_tokens, monkeypatch):
    TokenSplit.open(tiny_tokens, "val")
    calls = []
    monkeypatch.setattr(artifacts, "file_sha256", lambda path: calls.append(path))
    TokenSplit.open(tiny_tokens, "val")
    assert calls == []


def test_meta_records_hashes_and_the_longest_document(tiny_world, tiny_tokens, tokenizer):
    meta = json.loads((tiny_tokens / "meta.json").read_text())
    names = [f"{s}.{p}" for s in ("train", "val") for p in ("tokens.bin", "mask.bin", "docs.npy")]
    assert meta["sha256"] == {name: file_sha256(tiny_tokens / name) for name in names}
    texts = [json.loads(line)["text"] for line in (tiny_world / "documents.jsonl").open()]
    longest = max(len(ids) for ids in tokenizer(texts)["input_ids"])
    per_split = {s: int(TokenSplit.open(tiny_tokens, s).lengths().max()) for s in ("train", "val")}
    assert {s: meta["splits"][s]["max_document_tokens"] for s in per_split} == per_split
    assert max(per_split.values()) == longest > 50


def test_tokenizer_identity_ignores_padding_but_not_special_tokens(tiny_model, tmp_path):
    tok = build_byte_tokenizer()
    tok.save_pretrained(tmp_path / "tokenizer")  # as the tokenize stage does
    before = tokenizer_identity(tmp_path / "tokenizer")
    # an evaluation right before saving: generation, then any padded batch encode
    generate(tiny_model, tok, ["ab", "a longer prompt"], Sampling(max_new_tokens=2))
    assert tok.backend_tokenizer.padding is None
    tok(["ab", "abcd"], padding=True, padding_side="left", truncation=True, max_length=3)
    assert tok.backend_tokenizer.padding is not None
    save_model(tiny_model, tok, tmp_path / "model")
    saved = json.loads((tmp_path / "model/tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None
    assert tok.backend_tokenizer.padding is not None  # the caller's state is left as it was
    assert tokenizer_identity(tmp_path / "model") == before
    assert model_fingerprint(tmp_path / "model")["tokenizer_sha256"] == before
    # transient settings written by other tools do not count either
    config = json.loads((tmp_path / "model/tokenizer_config.json").read_text())
    config.update(padding_side="right", model_max_length=7)
    (tmp_path / "model/tokenizer_config.json").write_text(json.dumps(config))
    saved["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_id": 258}
    (tmp_path / "model/tokenizer.json").write_text(json.dumps(saved))
    assert tokenizer_identity(tmp_path / "model") == before
    # a new special token, or another token in a special role, is another tokenizer
    tok.add_tokens(["<|new|>"], special_tokens=True)
    tok.save_pretrained(tmp_path / "added")
    assert tokenizer_identity(tmp_path / "added") != before
    other = build_byte_tokenizer()
    other.eos_token = "<|end|>"
    other.save_pretrained(tmp_path / "role")
    assert tokenizer_identity(tmp_path / "role") != before
