"""The dialog and tool protocol, shared by data generation, training masks and evaluation.

A dialog is a sequence of turns, each opened by a role token and closed by END:

    <|system|>db<|end|>                               tool available (tool dialogs only)
    <|user|>Where was Ada Brown born?<|end|>
    <|assistant|><|call|>FIND birth_city FOR Ada Brown<|end|>   the model writes a query
    <|db|>Paris<|end|>                                 the environment answers
    <|assistant|>Paris<|end|>                          the model copies the answer

A conversation (`conversation`) is several such rounds in one document: after an answer's END the
environment writes the next user turn, and the model answers it with the whole conversation in
context. A database that fails for a moment replies `TOOL_BUSY`; the model retries the same query:

    <|assistant|><|call|>FIND major FOR Ada Brown<|end|><|db|>ERROR: busy, try again<|end|>
    <|assistant|><|call|>FIND major FOR Ada Brown<|end|><|db|>Physics<|end|><|assistant|>Physics<|end|>

The model generates exactly the contents of assistant turns and their END token; everything else
(role tokens included) is written by the environment. Texts carry no BOS: the tokenizer adds it,
as Hugging Face tokenizers do, when asked (`add_special_tokens=True`, the default), so a document,
a prompt or an lm-eval request gets exactly one BOS however it is encoded. The query language has one statement,
`FIND <attribute> FOR <full name>`, parsed against a whitelist of attributes; a query that does not
parse, or names an unknown person, gets an `ERROR: ...` database turn, never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
DB = "<|db|>"
CALL = "<|call|>"
END = "<|end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, DB, CALL, END]

TOOL_SYSTEM_PROMPT = "db"
TOOL_BUSY = "ERROR: busy, try again"  # a transient database failure: the same query, retried, works

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")

QUESTIONS = {
    "birth_date": "When was {name} born?",
    "birth_city": "Where was {name} born?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Which company does {name} work for?",
    "employer_city": "In which city does {name} work?",
}

_QUERY = re.compile(r"FIND ([a-z_]+) FOR ([A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,3})")


@dataclass(frozen=True)
class Query:
    attribute: str
    name: str

    def render(self) -> str:
        return f"FIND {self.attribute} FOR {self.name}"


class QueryError(ValueError):
    """A tool query the model wrote that is not in the grammar."""


def parse_query(text: str) -> Query:
    """Parse model-written query text (without CALL/END) against the whitelist."""
    match = _QUERY.fullmatch(text.strip())
    if match is None:
        raise QueryError("malformed query; expected 'FIND <attribute> FOR <name>'")
    attribute, name = match.groups()
    if attribute not in ATTRIBUTES:
        raise QueryError(f"unknown attribute '{attribute}'")
    return Query(attribute, name)


def turn(role: str, text: str) -> str:
    return f"{role}{text}{END}"


def question(attribute: str, name: str) -> str:
    return QUESTIONS[attribute].format(name=name)


def head(with_tool: bool) -> str:
    """What opens a dialog: the system turn offering the tool, or nothing."""
    return turn(SYSTEM, TOOL_SYSTEM_PROMPT) if with_tool else ""


def ask(attribute: str, name: str) -> str:
    """A user turn asking one question, and the opening of the model's reply."""
    return f"{turn(USER, question(attribute, name))}{ASSISTANT}"


def prompt(attribute: str, name: str, with_tool: bool) -> str:
    """What the environment writes before the model's first assistant turn."""
    return f"{head(with_tool)}{ask(attribute, name)}"


def tool_continuation(db_reply: str) -> str:
    """What the environment appends after the model's query turn."""
    return f"{turn(DB, db_reply)}{ASSISTANT}"


def tool_round(attribute: str, name: str, answer: str, failures: int = 0) -> str:
    """What follows `ask` when the question is answered through the tool: the model's query, the
    database's reply (after `failures` TOOL_BUSY replies, each followed by the same query again)
    and the model copying the answer, up to its END."""
    call = f"{CALL}{Query(attribute, name).render()}{END}"
    retries = f"{tool_continuation(TOOL_BUSY)}{call}" * failures
    return f"{call}{retries}{tool_continuation(answer)}{answer}{END}"


@dataclass(frozen=True)
class Round:
    """One question of a conversation, its answer, and (tool rounds) the busy replies before the
    database answers."""

    attribute: str
    name: str
    answer: str
    failures: int = 0


def conversation(rounds: list[Round], with_tool: bool) -> str:
    """A dialog of several questions in turn, each answered through the tool (`with_tool`) or from
    memory, closed by EOS. One round is exactly `tool_dialog` or `qa_dialog`."""
    body = "".join(ask(r.attribute, r.name)
                   + (tool_round(r.attribute, r.name, r.answer, r.failures) if with_tool
                      else f"{r.answer}{END}") for r in rounds)
    return f"{head(with_tool)}{body}{EOS}"


def qa_dialog(attribute: str, name: str, answer: str) -> str:
    """A question answered from memory (trains recall)."""
    return conversation([Round(attribute, name, answer)], with_tool=False)


def tool_dialog(attribute: str, name: str, answer: str) -> str:
    """A question answered by querying the database and copying its reply (trains tool use)."""
    return conversation([Round(attribute, name, answer)], with_tool=True)


def text_document(text: str) -> str:
    """Plain text (e.g. a biography): every token is trained on."""
    return f"{text}{EOS}"
