"""Batched generation equals one-at-a-time generation; tool calls are executed between turns."""

import torch

from lmpipe import protocol
from lmpipe.generate import answer_questions, generate_turns
from lmpipe.tooldb import PeopleDB


def test_left_padded_batches_generate_what_single_prompts_do(tiny_model, tokenizer):
    prompts = [protocol.prompt("major", "Al Bo", True),
               protocol.prompt("birth_date", "Christina Delacroix-Evans", False),
               protocol.prompt("employer", "Zoe Young", True)]
    torch.manual_seed(0)
    batched = generate_turns(tiny_model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    single = [generate_turns(tiny_model, tokenizer, [p], 12, 1)[0] for p in prompts]
    assert batched == single
    assert all(protocol.END not in t for t in batched)


class ScriptedModel(torch.nn.Module):
    """Writes a fixed query, then copies whatever the database said: a perfect tool user."""

    def __init__(self, tokenizer, query):
        super().__init__()
        self.tokenizer = tokenizer
        self.query = query

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids in input_ids.tolist():
            text = self.tokenizer.decode(ids).replace(protocol.PAD, "")
            if protocol.DB in text:
                reply = text.rsplit(protocol.DB, 1)[1].split(protocol.END)[0]
            else:
                reply = f"{protocol.CALL}{self.query}"
            new = self.tokenizer(reply + protocol.END, add_special_tokens=False)["input_ids"]
            rows.append(ids + new)
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


def test_tool_calls_run_against_the_database(tiny_world, tokenizer):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        person = db.people("heldout")[0]
        good = ScriptedModel(tokenizer, f"FIND birth_city FOR {person['name']}")
        [ex] = answer_questions(good, tokenizer, [("birth_city", person["name"])], db)
        assert ex.query == f"FIND birth_city FOR {person['name']}"
        assert ex.db_reply == ex.answer == person["birth_city"]
        bad = ScriptedModel(tokenizer, "DROP TABLE people")
        [ex] = answer_questions(bad, tokenizer, [("birth_city", person["name"])], db)
        assert ex.db_reply.startswith("ERROR: malformed query") and ex.answer == ex.db_reply
        assert len(db.people("heldout")) == 10
