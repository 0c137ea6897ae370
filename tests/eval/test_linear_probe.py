"""Linear probes (lmpipe/eval/linear_probe.py): the split is by person, the probe scores only what
it can score, the JSONL is one line per (checkpoint, layer, attribute), the controls (next-token
baseline, Hewitt & Liang's control task, selectivity) are right on hidden states built to hold the
next token only, the label, or nothing, the store and the report carry them, and on a model trained
for real to memorize a small world the facts are linearly readable at the top layer while an
untrained model of the same shape stays at chance."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmpipe.cli import main
from lmpipe.core import protocol
from lmpipe.data import world
from lmpipe.data.params import WorldParams
from lmpipe.data.tokens import TokenSplit, tokenize_world
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.linear_probe import (
    FINAL,
    PROBE_FILE,
    control_labels,
    control_scores,
    fit_probe,
    last_token_states,
    next_token_baseline,
    next_token_ids,
    probe_continuation,
    probe_label,
    probe_model,
    probe_text,
    split_people,
)
from lmpipe.eval.params import EvalParams
from lmpipe.eval.probe_run import format_table, probe_run
from lmpipe.model.build import build_model, save_model
from lmpipe.model.params import ModelParams
from lmpipe.train.checkpoint import TrainerState, save_checkpoint
from lmpipe.train.loop import train
from lmpipe.train.params import TrainParams

pytest.importorskip("sklearn", reason="pip install 'lmpipe[probes]'")

TINY_MODEL = ModelParams(d_model=16, n_layers=1, n_heads=2, max_seq_len=256)  # conftest's
CONTROL_KEYS = {"control_next_token_accuracy", "control_task_accuracy", "selectivity"}
RECORD_KEYS = {"step", "checkpoint", "layer", "attribute", "accuracy", "chance", "n_train",
               "n_test", "n_classes", "context"} | CONTROL_KEYS


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


# -- the split, the labels, the texts ------------------------------------------------------------
def test_people_are_split_not_examples():
    names = [f"Person {i:03d}" for i in range(100)]
    train_names, test_names = split_people(names, 0.3, seed=0)
    assert not set(train_names) & set(test_names)  # no person on both sides
    assert sorted(train_names + test_names) == names and len(test_names) == 30
    # a function of who is in it and the seed, not of the order the database returned them
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    assert split_people(shuffled, 0.3, seed=0) == (train_names, test_names)
    assert split_people(names, 0.3, seed=1) != (train_names, test_names)
    assert len(split_people(names[:2], 0.3)[1]) == 1  # always someone on each side
    with pytest.raises(ValueError, match="at least 2 people"):
        split_people(names[:1])


def test_labels_and_texts():
    person = {"name": "Ada Brown", "birth_date": "1975-03-25", "birth_city": "Paris"}
    assert probe_label(person, "birth_date") == "03"  # the month: 12 classes, not ~17,000
    assert probe_label(person, "birth_city") == "Paris"
    assert probe_text("Ada Brown", "major", "bio") == "Ada Brown"  # after the tokenizer's BOS
    assert probe_text("Ada Brown", "birth_city", "question") == \
        f"{protocol.USER}Where was Ada Brown"
    assert probe_text("Ada Brown", "major", "answer") == \
        protocol.prompt("major", "Ada Brown", with_tool=False)
    with pytest.raises(ValueError, match="context"):
        probe_text("Ada Brown", "major", "name")


def test_padded_batches_read_each_texts_own_last_token(tiny_model, tokenizer):
    texts = [probe_text(n, "major", "bio") for n in ("Ada Brown", "Bo Li", "Xavier Yamada")]
    batched = last_token_states(tiny_model, tokenizer, texts, batch_size=3)
    assert batched.shape == (3, TINY_MODEL.n_layers + 1, TINY_MODEL.d_model)
    for row, text in enumerate(texts):
        alone = last_token_states(tiny_model, tokenizer, [text])
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5)
    # layer 0 is the embedding of the name's last byte
    last = tokenizer.encode("n", add_special_tokens=False)[0]
    np.testing.assert_allclose(batched[0, 0], tiny_model.model.embed_tokens.weight[last].detach(),
                               atol=1e-6)


def test_the_probe_scores_only_labels_it_has_seen():
    rng = np.random.default_rng(0)
    centers = {"a": [4.0, 0.0], "b": [0.0, 4.0], "c": [-4.0, -4.0]}
    train_y = ["a"] * 10 + ["b"] * 6 + ["c"] * 4
    train_x = np.array([centers[y] for y in train_y]) + rng.normal(0, 0.5, (20, 2))
    test_y = ["a", "b", "c", "c", "z"]  # nobody in train has "z": it cannot count
    test_x = np.array([centers.get(y, [9.0, 9.0]) for y in test_y]) + rng.normal(0, 0.5, (5, 2))
    score = fit_probe(train_x, train_y, test_x, test_y)
    assert (score.n_train, score.n_test, score.n_classes) == (20, 4, 3)
    assert score.accuracy == 1.0  # separable clusters
    assert score.chance == 0.25  # always "a", the most frequent train label, on the 4 kept
    # one class in train: the probe can only say it, so it scores the baseline
    one = fit_probe(train_x[:10], train_y[:10], test_x, test_y)
    assert one.accuracy == one.chance == 1.0 and one.n_test == 1
    assert fit_probe(train_x, train_y, test_x[-1:], test_y[-1:]) is None  # nothing to score
    # a tie for the most frequent label: the baseline picks one of them at random
    tied = fit_probe(train_x[4:], train_y[4:], test_x, test_y)
    assert tied.n_classes == 3 and tied.chance == 0.25  # "a" and "b" (6 each): 1/4 either way
    tied = fit_probe(train_x[4:], train_y[4:], test_x[:2], ["a", "a"])
    assert tied.chance == 0.5


# -- the controls ---------------------------------------------------------------------------------
def test_the_next_token_is_the_one_training_text_puts_after_the_probed_position(tokenizer):
    person = {"name": "Ada Brown", "birth_date": "1975-03-25", "birth_city": "Paris"}
    assert probe_continuation(person, "birth_city", "answer") == f"Paris{protocol.END}"
    assert probe_continuation(person, "birth_city", "question") == \
        f" born?{protocol.END}{protocol.ASSISTANT}"
    assert probe_continuation(person, "birth_city", "bio") == " was born on "
    # each continuation completes its probe text into the training document it comes from
    assert probe_text("Ada Brown", "birth_city", "answer") + \
        probe_continuation(person, "birth_city", "answer") + protocol.EOS == \
        protocol.qa_dialog("birth_city", "Ada Brown", "Paris")
    assert probe_text("Ada Brown", "birth_city", "question") + \
        probe_continuation(person, "birth_city", "question") == \
        protocol.prompt("birth_city", "Ada Brown", with_tool=False)
    texts = [probe_text("Ada Brown", a, c) for a, c in
             (("birth_date", "answer"), ("birth_city", "answer"), ("major", "bio"),
              ("major", "question"))]
    continuations = [probe_continuation(person, a, c) for a, c in
                     (("birth_date", "answer"), ("birth_city", "answer"), ("birth_city", "bio"),
                      ("birth_city", "question"))]
    byte = {c: tokenizer.encode(c, add_special_tokens=False)[0] for c in "1P "}
    assert next_token_ids(tokenizer, texts, continuations) == \
        [byte["1"], byte["P"], byte[" "], byte[" "]]  # every date's answer starts with "1"


def test_the_next_token_baseline_is_a_lookup_from_the_token_to_the_label():
    # token 1 -> "a" 3 times, "b" once; token 2 -> "c" and "d" twice each (a tie); overall "a"
    train_tokens = [1, 1, 1, 1, 2, 2, 2, 2]
    train_y = ["a", "a", "a", "b", "c", "c", "d", "d"]
    test_tokens = [1, 1, 2, 2, 2, 9, 9, 1]
    test_y = ["a", "b", "c", "d", "a", "a", "c", "z"]  # "z": never in train, not scored
    # 1/"a" hit, 1/"b" miss, 2/"c" and 2/"d" half each (c or d), 2/"a" miss, unseen token 9:
    # the overall most frequent ("a"): 9/"a" hit, 9/"c" miss
    assert next_token_baseline(train_tokens, train_y, test_tokens, test_y) == \
        pytest.approx((1 + 0 + 0.5 + 0.5 + 0 + 1 + 0) / 7)
    assert next_token_baseline(train_tokens, train_y, [1], ["z"]) is None
    # one token for everyone (bio, question): the baseline is chance, the most frequent label
    constant = next_token_baseline([0] * 8, train_y, [0] * 4, ["a", "b", "a", "c"])
    assert constant == 0.5


def test_control_labels_are_a_random_label_fixed_per_person():
    names = [f"Person {i:03d}" for i in range(60)]
    labels = ["x"] * 30 + ["y"] * 20 + ["z"] * 10
    control = control_labels(names, labels, seed=0, attribute="major")
    assert sorted(control) == sorted(labels)  # the real labels' frequencies
    assert control != labels
    # fixed per person: the same whatever order the people come in
    order = list(range(60))
    random.Random(1).shuffle(order)
    shuffled = control_labels([names[i] for i in order], [labels[i] for i in order], 0, "major")
    assert shuffled == [control[i] for i in order]
    assert control_labels(names, labels, seed=1, attribute="major") != control
    assert control_labels(names, labels, seed=0, attribute="employer") != control
    with pytest.raises(ValueError, match="labels"):
        control_labels(names, labels[:-1])


# Constructed people: two next tokens ("A", "B"), two labels per token, like cities sharing their
# first letter. Train: A -> a1 x60, a2 x40; B -> b1 x50, b2 x50. Test: A -> a1 x12, a2 x8;
# B -> b1 x10, b2 x10. Knowing the token, the best guess is a1 for A (12 of 20 right) and either
# b1 or b2 for B (10 of 20 either way): 22/40 = 0.55, with chance (always a1) 12/40 = 0.3.
TRAIN = [("A", "a1")] * 60 + [("A", "a2")] * 40 + [("B", "b1")] * 50 + [("B", "b2")] * 50
TEST = [("A", "a1")] * 12 + [("A", "a2")] * 8 + [("B", "b1")] * 10 + [("B", "b2")] * 10
NEXT_TOKEN_ONLY = 22 / 40


def _embed(values: list[str], rng: np.random.Generator, width: int = 8) -> np.ndarray:
    """Each distinct value a random direction of width `width` (every coordinate carries it, so
    standardizing the features does not blow the noise up in coordinates that hold nothing)."""
    table = {v: rng.normal(0, 1, width) for v in sorted(set(values))}
    return np.stack([table[v] for v in values])


def _controls(states: np.ndarray) -> dict:
    tokens = [t for t, _ in TRAIN + TEST]
    labels = [y for _, y in TRAIN + TEST]
    names = [f"Person {i:03d}" for i in range(len(labels))]
    score = fit_probe(states[:len(TRAIN)], labels[:len(TRAIN)], states[len(TRAIN):],
                      labels[len(TRAIN):])
    assert score.chance == pytest.approx(12 / 40) and score.n_test == 40
    return {"accuracy": score.accuracy,
            **control_scores(states, labels, tokens, control_labels(names, labels), len(TRAIN),
                             score.accuracy)}


def test_controls_on_hidden_states_that_hold_the_next_token_the_label_or_nothing():
    rng = np.random.default_rng(0)
    tokens = [t for t, _ in TRAIN + TEST]
    labels = [y for _, y in TRAIN + TEST]
    noise = rng.normal(0, 0.01, (len(labels), 8))

    # states that hold the next token and nothing else (the same state for everyone with the same
    # token): the probe answers one label per token, at best the token's majority, so it scores
    # exactly the next-token baseline, nothing beyond it; the control task (random labels per
    # person) cannot be learned across people, so selectivity stays near accuracy - chance:
    # selectivity does not tell the next token from the fact, the next-token baseline does
    token_only = _controls(_embed(tokens, rng))
    assert token_only["control_next_token_accuracy"] == pytest.approx(NEXT_TOKEN_ONLY)
    assert token_only["accuracy"] == pytest.approx(NEXT_TOKEN_ONLY)
    assert token_only["selectivity"] == \
        pytest.approx(token_only["accuracy"] - token_only["control_task_accuracy"])
    assert token_only["control_task_accuracy"] <= 0.4

    # states that hold the label: the probe reads it all, beyond the next token (0.45) and well
    # above the control task
    label = _controls(_embed(labels, rng) + noise)
    assert label["accuracy"] == 1.0
    assert label["control_next_token_accuracy"] == pytest.approx(NEXT_TOKEN_ONLY)  # not the states'
    assert label["accuracy"] - label["control_next_token_accuracy"] == pytest.approx(0.45)
    assert label["selectivity"] >= 0.6

    # states that hold nothing about the person: probe and control task both near chance
    nothing = _controls(rng.normal(0, 1, (len(labels), 8)))
    assert abs(nothing["selectivity"]) <= 0.2
    assert nothing["accuracy"] <= NEXT_TOKEN_ONLY


def test_probe_model_records_the_controls_and_the_table_prints_them(tiny_model, tokenizer,
                                                                    tiny_world):
    with PeopleDB(tiny_world / "people.duckdb") as db:
        people = db.people("train")
    records = probe_model(tiny_model, tokenizer, people, attributes=["birth_date", "birth_city"],
                          context="answer")
    assert records and all(CONTROL_KEYS <= set(r) for r in records)
    for r in records:
        assert r["selectivity"] == pytest.approx(r["accuracy"] - r["control_task_accuracy"])
    by_attribute = {r["attribute"]: r for r in records}
    # every date's answer starts with "1": the next token says nothing, its baseline is chance
    date = by_attribute["birth_date"]
    assert date["control_next_token_accuracy"] == pytest.approx(date["chance"])
    table = format_table(records, FINAL)
    assert "next tok" in table and "selectivity" in table
    plain = probe_model(tiny_model, tokenizer, people, attributes=["birth_city"], controls=False)
    assert plain and not any(CONTROL_KEYS & set(r) for r in plain)
    assert "next tok" not in format_table(plain) and "selectivity" not in format_table(plain)


def test_the_store_and_the_report_carry_the_controls(tmp_path):
    from lmpipe.report import probes as report
    from lmpipe.report.source import Source
    from lmpipe.store.index import index_runs, query

    base = {"step": 10, "checkpoint": FINAL, "attribute": "major", "chance": 0.25, "n_train": 42,
            "n_test": 18, "n_classes": 4, "context": "answer"}
    runs = tmp_path / "runs"
    for run, rows in (
            ("new", [{**base, "layer": k, "accuracy": 0.5 + 0.25 * k,
                      "control_next_token_accuracy": 1.0, "control_task_accuracy": 0.25,
                      "selectivity": 0.25 + 0.25 * k} for k in range(3)]),
            ("old", [{**base, "layer": k, "accuracy": 0.3} for k in range(3)])):  # no controls
        (runs / run).mkdir(parents=True)
        (runs / run / "summary.json").write_text(json.dumps({"stage": "train", "name": run}))
        (runs / run / PROBE_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "runs.duckdb"
    index_runs(runs, db)
    table = query(db, "SELECT * FROM linear_probes ORDER BY run_id, layer")
    new = table[table["run_id"].str.endswith("new")]
    old = table[table["run_id"].str.endswith("old")]
    assert new["selectivity"].tolist() == [0.25, 0.5, 0.75]
    assert new["control_next_token_accuracy"].tolist() == [1.0] * 3
    assert new["control_task_accuracy"].tolist() == [0.25] * 3
    assert set(new["context"]) == {"answer"}
    assert old["selectivity"].isna().all() and old["control_task_accuracy"].isna().all()

    src = Source.open(db)
    try:
        frame = src.df(report.linear_sql(src.has("linear_probes", *report.CONTROL_COLUMNS)))
        page = report.build(src)
    finally:
        src.close()
    mine = frame[frame["run_id"].str.endswith("new") & (frame["attribute"] == "major")]
    assert mine.sort_values("layer")["beyond_next_token"].tolist() == \
        pytest.approx([-0.5, -0.25, 0.0])
    html = page.html()
    assert "selectivity" in html and "next-token baseline" in html
    # a store indexed before the controls: accuracy only
    assert report.linear_sql(False) and len(report.linear_heatmap(
        frame.assign(**{c: None for c in (*report.CONTROL_COLUMNS, "beyond_next_token")}))
        .to_dict()["params"]) == 2


# -- a run's checkpoints, the JSONL, the command, the eval option --------------------------------
@pytest.fixture()
def tiny_run(tmp_path, tokenizer) -> Path:
    """A run folder with two checkpoints and a final model (untrained weights: format only)."""
    run = tmp_path / "run"
    for step, seed in ((1, 0), (2, 1)):
        model = build_model(TINY_MODEL, seed=seed)
        optimizer = torch.optim.AdamW(model.parameters())
        save_checkpoint(run / "checkpoints", model, optimizer, TrainerState(step, 0, "x"), {},
                        keep=5)
    save_model(build_model(TINY_MODEL, seed=2), tokenizer, run / "model")
    (run / "summary.json").write_text(json.dumps({"steps": 2}))
    return run


def test_probe_run_writes_one_line_per_checkpoint_layer_and_attribute(tiny_run, tiny_world):
    records, path = probe_run(tiny_run, tiny_world / "people.duckdb", seed=0)
    assert path == tiny_run / PROBE_FILE
    rows = _rows(path)
    assert rows == records
    assert all(set(r) == RECORD_KEYS for r in rows)
    assert [r["checkpoint"] for r in rows[::len(rows) // 3]] == \
        ["step_00000001", "step_00000002", FINAL]
    assert {(r["checkpoint"], r["step"]) for r in rows} == \
        {("step_00000001", 1), ("step_00000002", 2), (FINAL, 2)}
    keys = [(r["checkpoint"], r["layer"], r["attribute"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert {r["layer"] for r in rows} == set(range(TINY_MODEL.n_layers + 1))
    with PeopleDB(tiny_world / "people.duckdb") as db:
        trained = len(db.people("train"))
    for r in rows:
        assert type(r["step"]) is int and type(r["layer"]) is int
        assert r["attribute"] in protocol.ATTRIBUTES and r["context"] == "bio"
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["chance"] <= 1.0
        assert r["n_train"] == 21 and 1 <= r["n_test"] <= trained - 21  # 30 people, 70/30
        assert 1 <= r["n_classes"] <= r["n_train"]
    # the month always has someone to score; a rerun overwrites the file with the same lines
    assert any(r["attribute"] == "birth_date" for r in rows)
    probe_run(tiny_run, tiny_world / "people.duckdb", seed=0)
    assert _rows(path) == rows
    final, _ = probe_run(tiny_run, tiny_world / "people.duckdb", checkpoints="final", people=20)
    assert {r["checkpoint"] for r in final} == {FINAL} and _rows(path) == final
    assert all(r["n_train"] == 14 for r in final)


def test_probe_command_prints_the_table_and_where_it_wrote(tiny_run, tiny_world, capsys):
    main(["probe", str(tiny_run), "--db", str(tiny_world / "people.duckdb"), "--checkpoints",
          "final", "--context", "question"])
    out = capsys.readouterr().out
    assert "layer 0" in out and "layer 1" in out and "chance" in out and "birth_date" in out
    assert f"to {tiny_run / PROBE_FILE}" in out
    assert {r["context"] for r in _rows(tiny_run / PROBE_FILE)} == {"question"}
    with pytest.raises(SystemExit) as exit_:
        main(["probe", str(tiny_run), "--db", str(tiny_world / "people.duckdb"), "--people", "1"])
    assert "at least 4" in str(exit_.value)
    with pytest.raises(SystemExit) as exit_:
        main(["probe", str(tiny_run / "nothing"), "--db", str(tiny_world / "people.duckdb")])
    assert exit_.value.code == 2 and "no model to probe" in capsys.readouterr().err


def test_eval_option_adds_probe_records(tiny_run, tiny_world, tiny_tokens):
    from lmpipe.eval.evaluate import evaluate_model

    assert EvalParams().linear_probe is False  # off by default: the eval stage does not change
    val = TokenSplit.open(tiny_tokens, "val")
    tp = TrainParams(eval_batches=1)
    with PeopleDB(tiny_world / "people.duckdb") as db:
        records, _ = evaluate_model(tiny_run / "model", db, val,
                                    EvalParams(linear_probe=True, batch_size=64), [], [], tp)
        plain, _ = evaluate_model(tiny_run / "model", db, val, EvalParams(batch_size=64), [], [],
                                  tp)
    assert not [r for r in plain if r["metric"].startswith("linear_probe")]
    probes = [r for r in records if r["metric"] == "linear_probe_accuracy"]
    layers = [f"layer{k}" for k in range(TINY_MODEL.n_layers + 1)]
    means = {r["split"]: r for r in probes if r["attribute"] is None}
    assert sorted(means) == layers
    per_attribute = [r for r in probes if r["attribute"] is not None]
    assert {r["split"] for r in per_attribute} == set(layers)
    for layer, mean in means.items():
        mine = [r["value"] for r in per_attribute if r["split"] == layer]
        assert mean["value"] == pytest.approx(np.mean(mine))
    chance = [r for r in records if r["metric"] == "linear_probe_chance"]
    assert chance and all(r["split"] == "people" for r in chance)


# -- the real thing -------------------------------------------------------------------------------
# A world small enough to memorize in ~30 s on one thread: 60 people, four values per attribute
# (each with its own first letter, so the byte the model writes first names the value) so that
# 42 training people show every value ~10 times. Birth dates keep their 12 months.
TEST_VALUES = {
    "CITIES": ["Amsterdam", "Berlin", "Cairo", "Dublin"],
    "UNIVERSITIES": ["Ashford University", "Belmont University", "Carlton University",
                     "Dunmore University"],
    "MAJORS": ["Anthropology", "Biology", "Chemistry", "Economics"],
    "EMPLOYERS": ["Acme Corp", "Beacon Systems", "Cobalt Group", "Delta Foods"],
}
MEMORIZE_MODEL = ModelParams(d_model=64, n_layers=2, n_heads=2, max_seq_len=256)
STEPS = 800  # ~35 s on one thread; recall without the tool reaches ~0.97 by ~1,000 steps


@pytest.fixture(scope="module")
def memorized(tmp_path_factory, tokenizer) -> Path:
    """A run folder: a model trained on the biographies and Q&A of 60 people until it recalls
    them, with checkpoints along the way."""
    root = tmp_path_factory.mktemp("linear_probe")
    with pytest.MonkeyPatch.context() as patch:
        for name, values in TEST_VALUES.items():
            patch.setattr(world, name, values)
        world.write_world(WorldParams(seed=3, people=60, heldout_people=0, bios_per_person=1,
                                      qa_dialogs=True, tool_dialogs=False), root / "world")
    tokenize_world(root / "world", tokenizer, root / "tokens", val_fraction=0.05,
                   loss_on="assistant", seed=0)
    run = root / "run"
    model = build_model(MEMORIZE_MODEL, seed=0)
    train(model, TokenSplit.open(root / "tokens", "train"), TokenSplit.open(root / "tokens", "val"),
          TrainParams(steps=STEPS, batch_size=32, lr=3e-3, warmup_steps=50, weight_decay=0.0,
                      eval_every=10_000, log_every=10_000, checkpoint_every=STEPS // 2,
                      keep_checkpoints=5),
          None, tokenizer.pad_token_id, folder=run)
    save_model(model.eval(), tokenizer, run / "model")
    return root


def _top_layer(records: list[dict], checkpoint: str = FINAL) -> tuple[float, float]:
    top = max(r["layer"] for r in records)
    mine = [r for r in records if r["checkpoint"] == checkpoint and r["layer"] == top]
    return (float(np.mean([r["accuracy"] for r in mine])),
            float(np.mean([r["chance"] for r in mine])))


@pytest.mark.slow
def test_a_memorizing_model_makes_facts_linearly_readable_at_the_top_layer(memorized, tokenizer):
    """Read at the recall prompt's last token (`answer`), where the model looks the fact up.

    Measured over 4 world/model seeds, up to 3 probe splits each, top layer, mean of attributes:
    trained 0.69-0.83 against chance 0.19-0.27 (margin >= 0.45); the untrained twin 0.13-0.29
    (chance - 0.13 to chance + 0.09); on this seed the halfway checkpoint reads 0.30. At the
    name's last token (`bio`, `question`) the same trained models stay at chance at every layer
    (not asserted: it is a finding about tiny byte-level models, not a property of the probe).
    Beside the controls (seed 3, final model, top layer, mean of attributes): accuracy 0.772,
    next-token baseline 0.844 (1.0 for every attribute but the month, whose first byte is always
    "1"), selectivity 0.587: the probe reads the answer's first byte, not more (not asserted
    either)."""
    db = memorized / "world" / "people.duckdb"
    records, _ = probe_run(memorized / "run", db, context="answer")
    for checkpoint in sorted({r["checkpoint"] for r in records}):
        print(checkpoint, format_table(records, checkpoint), sep="\n")
    accuracy, chance = _top_layer(records)
    assert accuracy >= chance + 0.3
    # layer 0 is the embedding of the prompt's last token, the same for everyone: a constant
    # answer, chance (exactly, unless two labels tie for most frequent)
    layer0 = [r for r in records if r["layer"] == 0 and r["checkpoint"] == FINAL]
    assert np.mean([r["accuracy"] for r in layer0]) == pytest.approx(chance, abs=0.1)
    assert {r["checkpoint"] for r in records} == {f"step_{STEPS // 2:08d}", f"step_{STEPS:08d}",
                                                  FINAL}
    # the controls, end to end: each test value has its own first letter, so the answer's first
    # byte names it (next-token baseline 1.0), while every date starts with "1" (baseline chance)
    for r in records:
        expected = r["chance"] if r["attribute"] == "birth_date" else 1.0
        assert r["control_next_token_accuracy"] == pytest.approx(expected)
        assert r["selectivity"] == pytest.approx(r["accuracy"] - r["control_task_accuracy"])

    # the same probe on an untrained model of the same shape reads nothing
    with PeopleDB(db) as people_db:
        people = people_db.people("train")
    untrained = probe_model(build_model(MEMORIZE_MODEL, seed=0).eval(), tokenizer, people,
                            context="answer")
    baseline, baseline_chance = _top_layer([{**r, "checkpoint": FINAL} for r in untrained])
    assert baseline <= baseline_chance + 0.15
    assert accuracy >= baseline + 0.25
