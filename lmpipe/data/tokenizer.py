"""The byte-level tokenizer: 256 byte tokens plus the protocol's special tokens.

It is a real Hugging Face fast tokenizer (token id == byte value for ordinary bytes), so it is saved
beside every model with `save_pretrained` and loads back with `AutoTokenizer` in lm-eval, generation
and the hub ecosystem. Like Llama's, it prepends BOS when asked (`add_special_tokens=True`, the
default) and texts never carry one (`add_bos_when_asked`). `loss_mask` decides which tokens a model is trained to predict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lmpipe.core import protocol

N_BYTES = 256
VOCAB_SIZE = N_BYTES + len(protocol.SPECIAL_TOKENS)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(N_BYTES)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting, every byte stands alone.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=protocol.BOS,
        eos_token=protocol.EOS,
        pad_token=protocol.PAD,
        additional_special_tokens=[t for t in protocol.SPECIAL_TOKENS
                                   if t not in (protocol.BOS, protocol.EOS, protocol.PAD)],
        padding_side="left",
        model_max_length=1_000_000,
    )
    ids = tok.convert_tokens_to_ids(protocol.SPECIAL_TOKENS)
    if ids != list(range(N_BYTES, VOCAB_SIZE)):
        raise RuntimeError(f"special token ids drifted: {ids}")
    return add_bos_when_asked(tok)


def add_bos_when_asked(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Make `tok` prepend its BOS, and no EOS, when asked (`add_special_tokens=True`, the default):
    the Hugging Face convention that lm-eval, generation and other clients assume, so text encoded
    anywhere gets the one BOS every lmpipe document is trained after. The rule is written into
    tokenizer.json's post-processor, so `AutoTokenizer` loads it back from the files alone."""
    tok.add_eos_token = False  # each setter rebuilds the post-processor from both flags
    tok.add_bos_token = True
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (run the tokenize stage first)")
    return AutoTokenizer.from_pretrained(str(path))


def special_id(name: str) -> int:
    return N_BYTES + protocol.SPECIAL_TOKENS.index(name)


def loss_mask(ids: np.ndarray, loss_on: str = "assistant", tokenizer=None) -> np.ndarray:
    """1 where a token is a training target, for one document's ids.

    `all` trains every token but the first. `assistant` trains the tokens the model writes in a
    dialog: everything after an ASSISTANT role token up to and including its END. A document with
    no role tokens (plain text such as a biography) is trained on entirely. The role tokens' ids
    come from `tokenizer` (default: the byte tokenizer's).
    """
    ids = np.asarray(ids)
    mask = np.ones(len(ids), dtype=np.uint8)
    mask[:1] = 0
    if loss_on == "all":
        return mask
    role = (special_id if tokenizer is None else tokenizer.convert_tokens_to_ids)
    roles = [role(t) for t in (protocol.SYSTEM, protocol.USER, protocol.ASSISTANT, protocol.DB)]
    if not np.isin(ids, roles).any():
        return mask
    assistant, end = role(protocol.ASSISTANT), role(protocol.END)
    mask[:] = 0
    inside = False
    for i, tid in enumerate(ids.tolist()):
        if inside:
            mask[i] = 1
            if tid == end:
                inside = False
        elif tid == assistant:
            inside = True
    return mask
