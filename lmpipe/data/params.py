"""The data's sections of params.yaml: `data` (which corpus), `world` (the people world) and
`tokenize` (the tokenizer and how documents become token arrays)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmpipe.core.section import Section

# the tokenizer kinds lmpipe/data/tokenizer_kinds.py builds, named once
TOKENIZER_KINDS = ("byte", "char", "bpe", "hf_dir", "tiktoken", "sentencepiece", "smollm2")
FILE_KINDS = ("hf_dir", "tiktoken", "sentencepiece")  # read from `tokenize.path`


class WorldParams(Section):
    """The synthetic people world written by `prepare`."""

    seed: int = 0
    people: int = Field(1000, ge=1, description="people whose facts appear in training documents")
    heldout_people: int = Field(200, ge=0, description="people that exist only in the database")
    bios_per_person: int = Field(0, ge=0)
    qa_dialogs: bool = False
    tool_dialogs: bool = True
    conversations_per_person: int = Field(0, ge=0, description="multi-turn conversations about each "
                                          "person: conversation_turns questions in turn, through "
                                          "the tool (tool_dialogs) or else from memory (qa_dialogs)")
    conversation_turns: int = Field(3, ge=2, le=6, description="questions in a conversation, each "
                                    "a different attribute of its person")
    tool_error_rate: float = Field(0.0, ge=0.0, lt=1.0, description="share of tool rounds (dialogs "
                                   "and conversations) whose first query gets a transient "
                                   "'ERROR: busy' reply, which the model learns to retry")

    @model_validator(mode="after")
    def _conversations_need_dialogs(self) -> "WorldParams":
        if self.conversations_per_person and not (self.tool_dialogs or self.qa_dialogs):
            raise ValueError("conversations_per_person: a conversation is tool or Q&A rounds; "
                             "expected tool_dialogs or qa_dialogs true")
        return self


class DataParams(Section):
    """What `prepare` writes: the generated people world, tiny Shakespeare, or a local corpus."""

    source: Literal["people", "shakespeare", "corpus"] = "people"
    path: str | None = Field(None, description="shakespeare: a local copy (sha256-checked; else "
                             "downloaded); corpus: the file to read")
    format: Literal["text", "jsonl", "parquet"] = "text"
    field: str = Field("text", description="the JSONL/Parquet field holding the text")
    cache_dir: str = "data/cache"
    max_documents: int | None = Field(None, ge=1, description="shakespeare/corpus: keep only the "
                                      "first N documents (quick runs and tests)")

    @model_validator(mode="after")
    def _corpus_needs_a_path(self) -> "DataParams":
        if self.source == "corpus" and not self.path:
            raise ValueError("path: not set, and data.source = corpus reads it; expected a text, "
                             "JSONL or Parquet file")
        return self


class TokenizeParams(Section):
    """The tokenizer and the train/val split written by `tokenize`.

    Plain corpora (shakespeare, corpus) are split per document. The people world is split by
    people (`prepare` marks every document; lmpipe/data/tokens.py): every document about a trained
    person is trained on, so every fact the evaluator asks is in training text, and validation
    text is about people who are never trained (held-out people, or dedicated validation people
    when world.heldout_people is 0)."""

    kind: Literal[TOKENIZER_KINDS] = "byte"  # type: ignore[valid-type]
    vocab_size: int | None = Field(None, ge=1, description="bpe: vocabulary size to train")
    path: str | None = Field(None, description="hf_dir / tiktoken / sentencepiece: the file or folder")
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description=(
        "plain corpora: the share of documents drawn (seeded) into validation; people world: "
        "validation holds the documents of max(1, round(val_fraction x world.people)) untrained "
        "people (at most as many as the world renders: its held-out people, or "
        "ceil(world.people / 10) validation people), no trained person's document is held out"))
    loss_on: Literal["assistant", "all"] = "assistant"
    seed: int = 0
