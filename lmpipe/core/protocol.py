"""The dialog and tool protocol, shared by data generation, training masks and evaluation.

A dialog is a sequence of turns, each opened by a role token and closed by END:

    <|system|>db<|end|>                               tool available (tool dialogs only)
    <|user|>Where was Ada Brown born?<|end|>
    <|assistant|><|call|>FIND birth_city FOR Ada Brown<|end|>   the model writes a query
    <|db|>Paris<|end|>                                 the environment answers
    <|assistant|>Paris<|end|>                          the model copies the answer

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


def prompt(attribute: str, name: str, with_tool: bool) -> str:
    """What the environment writes before the model's first assistant turn."""
    head = turn(SYSTEM, TOOL_SYSTEM_PROMPT) if with_tool else ""
    return f"{head}{turn(USER, question(attribute, name))}{ASSISTANT}"


def qa_dialog(attribute: str, name: str, answer: str) -> str:
    """A question answered from memory (trains recall)."""
    return f"{prompt(attribute, name, with_tool=False)}{answer}{END}{EOS}"


def tool_continuation(db_reply: str) -> str:
    """What the environment appends after the model's query turn."""
    return f"{turn(DB, db_reply)}{ASSISTANT}"


def tool_dialog(attribute: str, name: str, answer: str) -> str:
    """A question answered by querying the database and copying its reply (trains tool use)."""
    call = f"{CALL}{Query(attribute, name).render()}{END}"
    return (f"{prompt(attribute, name, with_tool=True)}{call}"
            f"{tool_continuation(answer)}{answer}{END}{EOS}")


def text_document(text: str) -> str:
    """Plain text (e.g. a biography): every token is trained on."""
    return f"{text}{EOS}"
