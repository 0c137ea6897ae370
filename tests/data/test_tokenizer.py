"""Byte tokenizer round trip, special tokens, saved form, and the loss mask."""

import numpy as np

from lmpipe.core import protocol
from lmpipe.data.tokenizer import VOCAB_SIZE, load_tokenizer, loss_mask, special_id
from lmpipe.data.tokens import TokenSplit


def test_round_trip_including_unicode_and_specials(tokenizer):
    text = protocol.tool_dialog("birth_city", "Zoe Müller", "Zürich — 東京")
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == protocol.BOS + text
    assert ids[0] == special_id(protocol.BOS) == 256 and 256 not in ids[1:]
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert max(ids) < VOCAB_SIZE == len(tokenizer)
    plain = "Ab c"
    assert tokenizer(plain, add_special_tokens=False)["input_ids"] == list(plain.encode())


def test_special_token_text_is_one_token(tokenizer):
    ids = tokenizer(protocol.CALL + protocol.END, add_special_tokens=False)["input_ids"]
    assert ids == [special_id(protocol.CALL), special_id(protocol.END)]


def test_saved_tokenizer_loads_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    text = protocol.qa_dialog("major", "Ada Brown", "Physics")
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again(text)["input_ids"][0] == special_id(protocol.BOS)
    assert again.padding_side == "left" and again.pad_token_id == special_id(protocol.PAD)


def _targets(tokenizer, text, loss_on="assistant"):
    ids = np.array(tokenizer(text)["input_ids"])
    return tokenizer.decode(ids[loss_mask(ids, loss_on) == 1].tolist())


def test_mask_trains_exactly_the_assistant_turns(tokenizer):
    text = protocol.tool_dialog("employer", "Ada Brown", "Acme Corp")
    assert _targets(tokenizer, text) == \
        f"{protocol.CALL}FIND employer FOR Ada Brown{protocol.END}Acme Corp{protocol.END}"
    assert _targets(tokenizer, protocol.qa_dialog("major", "Ada Brown", "Law")) == f"Law{protocol.END}"


def test_mask_trains_plain_text_and_all_mode_everything_but_first(tokenizer):
    bio = protocol.text_document("Ada Brown was born in Paris.")
    assert _targets(tokenizer, bio) == bio == "Ada Brown was born in Paris.<|eos|>"
    dialog = protocol.qa_dialog("major", "Ada Brown", "Law")
    assert _targets(tokenizer, dialog, "all") == dialog


def test_packed_splits_hold_whole_documents(tiny_tokens, tokenizer):
    train, val = TokenSplit.open(tiny_tokens, "train"), TokenSplit.open(tiny_tokens, "val")
    # 13 documents a person (1 bio, 6 Q&A, 6 tool dialogs); split by people: every trained
    # person's documents train, validation is 3 validation people's (0.1 x 30 trained)
    assert len(train.docs) == 30 * 13 and len(val.docs) == 3 * 13
    for split in (train, val):
        assert split.docs[-1, 1] == split.n_tokens == len(split.mask)
        start, end = split.docs[0]
        assert split.tokens[start] == special_id(protocol.BOS)
        assert split.tokens[end - 1] == special_id(protocol.EOS)


def test_splits_of_a_large_vocabulary_are_uint32_and_masks_use_its_role_ids(tmp_path):
    from lmpipe.data.tokenizer_kinds import build_tokenizer
    from lmpipe.data.tokens import tokenize_documents

    texts = [protocol.qa_dialog("major", "Ab Ba", "Law") + "w69999", protocol.text_document("abc")]
    tok = build_tokenizer("char", texts)
    tok.add_tokens([f"w{i}" for i in range(70_000)])  # push the vocabulary past uint16
    tokenize_documents(texts, tok, tmp_path, val_fraction=0.5, loss_on="assistant", seed=0)
    both = [TokenSplit.open(tmp_path, s) for s in ("train", "val")]
    assert all(s.tokens.dtype == np.uint32 for s in both)
    dialog = next(s for s in both if s.tokens.max() >= 70_000)
    targets = tok.decode(dialog.tokens[dialog.mask == 1].tolist())
    assert targets == f"Law{protocol.END}"
