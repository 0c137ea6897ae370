"""Text sources: verified Shakespeare, local corpora through datasets cached by content, splits."""

import json
from pathlib import Path

import pytest

from lmpipe.data.sources import (
    SHAKESPEARE_SHA256,
    SourceError,
    disk_usage,
    load_corpus,
    paragraphs,
    tiny_shakespeare,
    write_text_documents,
)

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare.txt absent")
def test_local_shakespeare_is_verified(tmp_path):
    assert tiny_shakespeare(str(SHAKESPEARE), tmp_path) == SHAKESPEARE
    fake = tmp_path / "fake.txt"
    fake.write_text("To be or not to be")
    with pytest.raises(SourceError, match=f"sha256 .* is not tiny Shakespeare's \\({SHAKESPEARE_SHA256}\\)"):
        tiny_shakespeare(str(fake), tmp_path)
    with pytest.raises(SourceError, match="data.path = .*nope.txt: file not found"):
        tiny_shakespeare(str(tmp_path / "nope.txt"), tmp_path)


def test_unreachable_url_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="could not download tiny Shakespeare from http://127.0.0.1:9/x"):
        tiny_shakespeare(None, tmp_path, url="http://127.0.0.1:9/x", timeout_s=2)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_jsonl_corpus_loads_and_a_second_load_adds_nothing_to_disk(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": f"document {i}", "n": i}) + "\n" for i in range(50)))
    cache = tmp_path / "cache"
    first = load_corpus(str(corpus), "jsonl", cache, field="body")
    size = disk_usage(cache)
    second = load_corpus(str(corpus), "jsonl", cache, field="body")
    assert first == second == [f"document {i}" for i in range(50)]
    assert size > 0 and disk_usage(cache) == size
    corpus.write_text(corpus.read_text() + json.dumps({"body": "new", "n": 99}) + "\n")
    assert load_corpus(str(corpus), "jsonl", cache, field="body")[-1] == "new"  # content changed


def test_text_and_parquet_corpora(tmp_path):
    import pandas as pd

    text = tmp_path / "a.txt"
    text.write_text("first line\n\nsecond line\n")
    assert load_corpus(str(text), "text", tmp_path / "c") == ["first line", "second line"]
    parquet = tmp_path / "a.parquet"
    pd.DataFrame({"text": ["x y", "z"]}).to_parquet(parquet)
    assert load_corpus(str(parquet), "parquet", tmp_path / "c") == ["x y", "z"]


def test_bad_corpora_name_the_problem(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(SourceError, match=r"data.field = 'text' not in .*c.jsonl \(fields: \['body'\]\)"):
        load_corpus(str(corpus), "jsonl", tmp_path / "cache")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(SourceError, match="no non-empty 'text' documents"):
        load_corpus(str(empty), "text", tmp_path / "cache")
    with pytest.raises(SourceError, match="data.format = 'csv'"):
        load_corpus(str(corpus), "csv", tmp_path / "cache")
    with pytest.raises(SourceError, match="file not found"):
        load_corpus(str(tmp_path / "missing.jsonl"), "jsonl", tmp_path / "cache")


def test_a_hub_name_needs_the_user_to_go_online(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match="a hub dataset name loads only with HF_HUB_OFFLINE=0"):
        load_corpus("someone/some-dataset", "text", tmp_path)


def test_text_documents_are_deduplicated(tmp_path):
    texts = paragraphs("A: one\n\nB: two\n\n\nA: one\n")
    assert texts == ["A: one", "B: two", "A: one"]
    stats = write_text_documents(texts, tmp_path, {"source": "test"})
    assert stats == {"documents": 2, "duplicates_dropped": 1, "bytes": 12}
    docs = [json.loads(line)["text"] for line in (tmp_path / "documents.jsonl").open()]
    assert docs == ["A: one<|eos|>", "B: two<|eos|>"]
