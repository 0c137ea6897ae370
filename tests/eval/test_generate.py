"""The generation loop: KV-cache decoding equals transformers' generate and one-at-a-time runs,
sampling is seeded, and tool calls are spliced into the sequences that make them only."""

import torch

from lmpipe.core import protocol
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.generate import Sampling, answer_questions, generate
from tests.eval.tiny_models import noisy_llama, steered

PROMPTS = [protocol.prompt("major", "Al Bo", True),
           protocol.prompt("birth_date", "Christina Delacroix-Evans", False),
           protocol.prompt("employer", "Zoe Young", True)]


def test_batched_kv_cache_decoding_matches_single_prompts_and_transformers(tiny_model, tokenizer):
    greedy = Sampling(max_new_tokens=12)
    batched = generate(tiny_model, tokenizer, PROMPTS, greedy, batch_size=3)
    single = [generate(tiny_model, tokenizer, [p], greedy, batch_size=1)[0] for p in PROMPTS]
    assert [g.ids for g in batched] == [g.ids for g in single]
    for prompt, ours in zip(PROMPTS, single):
        enc = tokenizer(prompt, return_tensors="pt")  # with its BOS, as lmpipe encodes it
        theirs = tiny_model.generate(**enc, max_new_tokens=12, do_sample=False,
                                     eos_token_id=tokenizer.convert_tokens_to_ids(
                                         [protocol.END, protocol.EOS]),
                                     pad_token_id=tokenizer.pad_token_id)
        assert ours.ids == theirs[0, enc["input_ids"].shape[1]:].tolist()
        assert ours.sampled == len(ours.ids) <= 12


def test_sampling_is_seeded_and_its_knobs_act(tiny_model, tokenizer):
    def run(**kw):
        return [g.ids for g in generate(tiny_model, tokenizer, PROMPTS,
                                        Sampling(max_new_tokens=20, **kw), batch_size=3)]

    hot = dict(temperature=1.5, seed=3)
    assert run(**hot) == run(**hot)
    assert run(**hot) != run(temperature=1.5, seed=4)
    assert run(temperature=1.0, top_k=1) == run()  # top-1 sampling is greedy
    assert run(temperature=1.0, top_p=1e-6) == run()
    assert run(repetition_penalty=5.0) != run()


def test_stop_strings_and_streaming(tiny_model, tokenizer):
    streamed = {}
    [free] = generate(tiny_model, tokenizer, [PROMPTS[0]], Sampling(max_new_tokens=30),
                      on_token=lambda row, text: streamed.setdefault(row, []).append(text))
    assert "".join(streamed[0]) == free.text(tokenizer)
    stop = free.text(tokenizer)[3:5]  # a string the greedy continuation is known to produce
    [cut] = generate(tiny_model, tokenizer, [PROMPTS[0]], Sampling(max_new_tokens=30,
                                                                   stop_strings=(stop,)))
    assert cut.finish == "stop" and stop in cut.text(tokenizer)
    assert len(cut.ids) < len(free.ids)
    token = tokenizer.convert_ids_to_tokens(free.ids[2])
    [early] = generate(tiny_model, tokenizer, [PROMPTS[0]], Sampling(max_new_tokens=30,
                                                                     stop_tokens=(token,)))
    assert early.ids == free.ids[:free.ids.index(free.ids[2]) + 1] and early.finish == "stop"


def test_finished_rows_leave_the_batch_and_the_others_decode_the_same(tokenizer):
    # after "!" the model ends its turn at once; the other rows run to their token budget
    model = steered(noisy_llama(), tokenizer, {"!": protocol.END})
    prompts = [PROMPTS[0] + "!", PROMPTS[1], PROMPTS[2] + "!", PROMPTS[0], PROMPTS[2]]
    widths = []
    hook = model.inner.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True)
    greedy = Sampling(max_new_tokens=8)
    batched = generate(model, tokenizer, prompts, greedy, batch_size=5)
    hook.remove()
    # the prefill with all five rows; the two that end at their first token take no step
    assert widths == [5] + [3] * 7
    single = [generate(model, tokenizer, [p], greedy, batch_size=1)[0] for p in prompts]
    assert [g.ids for g in batched] == [g.ids for g in single]
    assert [len(g.ids) for g in batched] == [1, 8, 1, 8, 8]


class ScriptedModel(torch.nn.Module):
    """Answers questions about "Direct" people straight away; for everyone else writes a query
    (`queries[name]`), then copies whatever the database said. Its `cache` is just
    the token history, so the real loop drives it exactly like a transformer."""

    def __init__(self, tokenizer, queries):
        super().__init__()
        self.tok, self.queries = tokenizer, queries
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"max_position_embeddings": 4096})()
        self.calls = []

    def _next(self, ids):
        text = self.tok.decode([i for i in ids if i != self.tok.pad_token_id])
        name = text.split(protocol.USER, 1)[1].split(" born", 1)[0].split("?", 1)[0].split()[-2:]
        name = " ".join(name)
        turn = text.rsplit(protocol.ASSISTANT, 1)[1]
        if protocol.DB in text:
            intended = text.rsplit(protocol.DB, 1)[1].split(protocol.END)[0] + protocol.END
        elif name.startswith("Direct"):
            intended = "Paris" + protocol.END
        else:
            intended = f"{protocol.CALL}{self.queries[name]}{protocol.END}"
        done = self.tok(turn, add_special_tokens=False)["input_ids"]
        plan = self.tok(intended, add_special_tokens=False)["input_ids"]
        return plan[len(done)] if len(done) < len(plan) else self.tok.pad_token_id

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                use_cache=True, logits_to_keep=0):
        # its cache is the token history; a prefill is handed generate's empty KV cache
        prefill = not isinstance(cache, torch.Tensor)
        history = input_ids if prefill else torch.cat([cache, input_ids], 1)
        self.calls.append(input_ids.shape[1])
        logits = torch.full((input_ids.shape[0], 1, len(self.tok)), -1e9)
        for row, ids in enumerate(history.tolist()):
            logits[row, 0, self._next(ids)] = 0.0
        return type("Out", (), {"logits": logits, "cache": history})()


def test_tool_calls_are_spliced_per_sequence_and_bad_queries_get_errors(tiny_world, tokenizer):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        held = db.people("heldout")
        ok, unknown = held[0]["name"], "Nobody Atall"
        queries = {ok: f"FIND birth_city FOR {ok}", unknown: f"FIND birth_city FOR {unknown}",
                   held[1]["name"]: "DROP TABLE people"}
        model = ScriptedModel(tokenizer, queries)
        names = [ok, "Direct Answer", unknown, held[1]["name"]]
        exchanges = answer_questions(model, tokenizer, [("birth_city", n) for n in names], db,
                                     batch_size=4)
        assert exchanges[0].query == queries[ok]
        assert exchanges[0].db_reply == exchanges[0].answer == held[0]["birth_city"]
        # no tool needed: answered directly, in the same batch, never waiting on the others
        assert exchanges[1].query is None and exchanges[1].answer == "Paris"
        assert exchanges[2].db_reply.startswith("ERROR") and exchanges[2].answer == exchanges[2].db_reply
        assert exchanges[3].db_reply.startswith("ERROR: malformed query")
        assert len(db.people("heldout")) == 10  # the database is read-only and intact
        # one prefill, then one token per step for the whole batch: no per-sequence re-prefill
        assert model.calls[0] > 1 and set(model.calls[1:]) == {1}
    direct = generate(model, tokenizer, [protocol.prompt("birth_city", "Direct Answer", True)],
                      Sampling(max_new_tokens=40), tool=lambda q: "never")[0]
    assert direct.finish == "stop" and direct.sampled == len("Paris") + 1  # stopped at its END


def test_lmpipe_generate_streams_and_names_a_bad_model_dir(tiny_model, tokenizer, tiny_world,
                                                           tmp_path, capsys):
    import pytest

    from lmpipe.cli import main
    from lmpipe.model.build import save_model

    save_model(tiny_model, tokenizer, tmp_path / "model")
    main(["generate", str(tmp_path / "model"), "Where was Al Bo born?", "--db",
          str(tiny_world / "people.duckdb"), "--temperature", "0", "--max-new-tokens", "7"])
    [g] = generate(tiny_model, tokenizer, [protocol.prompt("birth_city", "Al Bo", True)],
                   Sampling(max_new_tokens=7))
    assert capsys.readouterr().out == g.text(tokenizer) + "\n"
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(tmp_path / "nothing"), "hi"])
    assert exit_.value.code == 2 and "not a model directory" in capsys.readouterr().err
