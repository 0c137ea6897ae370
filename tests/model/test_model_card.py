"""Model cards: front matter in the Hub's schema, a readable body, and the stages that write them."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from lmpipe.core.run_folder import git_state
from lmpipe.model.build import build_model, count_parameters, load_model, save_model
from lmpipe.model.card import write_model_card
from lmpipe.params.config import Params, validate_params
from lmpipe.train.params import ModelRunParams, TrainParams
from tests.conftest import TINY_MODEL

COMPARISON = {
    "teacher": {"val_loss": 0.0002, "parameters": 148352.0, "recall_trained": 0.0,
                "tool_accuracy_trained": 1.0, "tool_accuracy_heldout": 0.995},
    "student": {"val_loss": 0.066, "parameters": 41408.0, "recall_trained": 0.0,
                "tool_accuracy_trained": 0.662, "tool_accuracy_heldout": 0.591},
    "distilled": {"val_loss": 0.0037, "parameters": 41408.0, "recall_trained": 0.005,
                  "tool_accuracy_trained": 0.996, "tool_accuracy_heldout": 0.978},
    "quantized": {"val_loss": 11.1, "parameters": 41408.0, "recall_trained": 0.0,
                  "tool_accuracy_trained": 0.0, "tool_accuracy_heldout": 0.0},
}


def split_card(path: Path) -> tuple[dict, str]:
    """(parsed YAML front matter, markdown body) of a card."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL)
    assert match, "the card must open with a --- delimited YAML block"
    return yaml.safe_load(match.group(1)), match.group(2)


def section(body: str, title: str) -> str:
    """The text of one `## title` section."""
    return body.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture()
def saved(tmp_path, tokenizer) -> tuple[Path, torch.nn.Module]:
    model = build_model(TINY_MODEL, seed=0, tokenizer=tokenizer).eval()
    return save_model(model, tokenizer, tmp_path / "model"), model


@pytest.fixture()
def params() -> dict:
    # not the defaults, so a round trip cannot pass by accident; 1e-05 checks float dumping
    return validate_params({
        "world": {"people": 300, "heldout_people": 40, "qa_dialogs": True, "bios_per_person": 2},
        "eval": {"heldout_people": 40},
        "distill": {"objective": {"reverse_kl": 0.7, "ce": 0.3}, "temperature": 2.0,
                    "train": {"steps": 40, "lr": 1e-05, "profile_steps": [1, 3]}},
    }).model_dump(mode="json")


def test_front_matter_is_hub_model_index_with_the_given_figures(saved, params):
    folder, _ = saved
    card = write_model_card(folder, name="distilled", stage="distill", params=params,
                            summary={"final_val_loss": 1.25, "steps": 40},
                            teacher="runs/teacher/model", comparison=COMPARISON)
    assert card == folder / "README.md"
    front, _ = split_card(card)
    assert front["library_name"] == "transformers"
    assert {"lmpipe", "distill"} <= set(front["tags"])
    assert front["base_model"] == "runs/teacher/model"  # a distilled model's base is its teacher
    [entry] = front["model-index"]
    assert entry["name"] == "distilled"
    [result] = entry["results"]
    assert result["task"]["type"] == "text-generation" and result["task"]["name"]
    assert result["dataset"]["type"] == "lmpipe/people-world"
    assert "300 trained + 40 held-out" in result["dataset"]["name"]
    metrics = {m["type"]: m for m in result["metrics"]}
    assert all(set(m) == {"type", "value", "name"} and m["name"] for m in metrics.values())
    assert metrics["tool_accuracy_heldout"]["value"] == 0.978
    assert metrics["tool_accuracy_trained"]["value"] == 0.996
    assert metrics["recall_trained"]["value"] == 0.005
    assert metrics["val_loss"]["value"] == 0.0037
    assert metrics["final_val_loss"]["value"] == 1.25  # the run's own figure, from the summary
    assert "parameters" not in metrics  # a size, not a result


def test_params_block_round_trips(saved, params):
    folder, _ = saved
    _, body = split_card(write_model_card(folder, name="student", stage="train", params=params))
    [block] = re.findall(r"```yaml\n(.*?)```", body, re.DOTALL)
    assert yaml.safe_load(block) == params


def test_comparison_table_has_a_row_per_model(saved, params):
    folder, _ = saved
    _, body = split_card(write_model_card(folder, name="quantized", stage="quantize",
                                          params=params, base_model="runs/distill/model",
                                          comparison=COMPARISON))
    rows = [line for line in section(body, "Evaluation").splitlines() if line.startswith("|")]
    header, _, *models = rows
    assert "tool acc., held-out" in header and "params" in header
    assert [r.split("|")[1].strip() for r in models] == [
        "teacher", "student", "distilled", "**quantized** (this model)"]
    assert "| 148,352 |" in models[0] and "| 0.995 |" in models[0]
    assert "| 11.1 |" in models[3]


def test_body_names_size_provenance_and_data(saved, params):
    folder, model = saved
    _, body = split_card(write_model_card(folder, name="student", stage="train", params=params))
    facts = dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", body, re.MULTILINE))
    assert facts["parameters"] == f"{count_parameters(model):,}"
    assert facts["layers"] == str(TINY_MODEL.n_layers)
    assert facts["width (hidden size)"] == str(TINY_MODEL.d_model)
    assert facts["lmpipe"] == importlib.metadata.version("lmpipe")
    commit = git_state()["git_commit"]
    assert (commit or "unknown") in facts["git commit"]
    data = section(body, "Training data")
    assert "300 trained people" in data and "40 held-out" in data
    assert "tool dialogs" in data and "question/answer dialogs" in data and "biographies" in data
    assert "40 steps" not in section(body, "Training")  # a train card reads the student section
    assert "1700 steps" in section(body, "Training")


def test_other_sources_are_described_and_no_figures_means_no_model_index(saved):
    folder, _ = saved
    params = validate_params({"data": {"source": "shakespeare", "max_documents": 50}})
    front, body = split_card(write_model_card(folder, name="quantized", stage="quantize",
                                              params=params.model_dump(mode="json"),
                                              base_model="runs/distill/model"))
    assert "model-index" not in front  # the Hub rejects an index without results
    assert front["base_model_relation"] == "quantized"
    assert "Tiny Shakespeare" in section(body, "Training data")
    assert "first 50 documents" in section(body, "Training data")
    assert "## Evaluation" not in body


def test_the_model_directory_still_loads_with_its_card(saved, params):
    folder, model = saved
    write_model_card(folder, name="student", stage="train", params=params, comparison=COMPARISON)
    loaded, tokenizer = load_model(folder)
    ids = torch.tensor([tokenizer.encode("Where was Ada Brown born?")])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def tiny_params(**sections) -> Params:
    tp = TrainParams(steps=2, batch_size=4, warmup_steps=0, log_every=1, eval_every=2,
                     eval_batches=2)
    return Params(**{name: ModelRunParams(model=TINY_MODEL, train=tp, **extra)
                     for name, extra in sections.items()})


def test_a_training_run_writes_its_card(tiny_tokens, tokenizer, tmp_path):
    from lmpipe.runs.training import train_from_scratch

    tokenizer.save_pretrained(tmp_path / "tokenizer")
    summary = train_from_scratch("student", tiny_params(student={}), tiny_tokens,
                                 tmp_path / "tokenizer", tmp_path / "run")
    front, body = split_card(tmp_path / "run" / "model" / "README.md")
    assert "train" in front["tags"] and "base_model" not in front
    [metric] = front["model-index"][0]["results"][0]["metrics"]
    assert metric == {"type": "final_val_loss", "value": summary["final_val_loss"],
                      "name": "final validation loss of the training run"}
    assert "trained from scratch by lmpipe's `train@student` stage" in body
    assert "steps 2," in section(body, "Training")


def test_an_imported_model_names_its_source(tiny_tokens, tokenizer, tmp_path, saved):
    from lmpipe.runs.training import train_from_scratch

    folder, _ = saved
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    train_from_scratch("teacher", tiny_params(teacher={"pretrained": str(folder)}), tiny_tokens,
                       tmp_path / "tokenizer", tmp_path / "run")
    front, body = split_card(tmp_path / "run" / "model" / "README.md")
    assert front["base_model"] == str(folder)
    assert f"the pretrained model `{folder}`, imported" in body


def test_quantize_writes_its_card(saved, tmp_path):
    from lmpipe.runs.quantize import quantize_run

    folder, _ = saved
    unused = tmp_path / "unused"  # ptq needs no tokens, cache or teacher
    quantize_run(Params(quantize={"method": "ptq"}), folder, tmp_path / "quantize", unused, unused,
                 unused, unused)
    front, body = split_card(tmp_path / "quantize" / "model" / "README.md")
    assert front["base_model"] == str(folder) and front["base_model_relation"] == "quantized"
    assert "quantize" in front["tags"]
    assert "ternary post-training quantization" in body and "packed 2 bits" in body
    assert "quantized linear layers 7" in body  # q, k, v, o, gate, up, down; lm_head skipped
    _, int8 = split_card(tmp_path / "quantize" / "int8" / "README.md")
    assert "int8 weight-only" in int8


def test_eval_writes_full_cards_into_its_own_folder_only(tmp_path, tokenizer):
    from lmpipe.core.pipeline_models import MODELS
    from lmpipe.runs.evaluation import write_cards

    models = {}
    for name, run in MODELS.items():
        models[name] = save_model(build_model(TINY_MODEL, seed=0, tokenizer=tokenizer), tokenizer,
                                  tmp_path / "runs" / run / "model")
    (tmp_path / "runs" / "distill" / "summary.json").write_text(json.dumps(
        {"stage": "distill", "final_val_loss": 0.5, "steps": 1700}))
    cards = write_cards(models, COMPARISON, Params(), tmp_path / "runs" / "eval" / "cards")
    assert not list((tmp_path / "runs").glob("*/model/README.md"))  # other stages' outputs
    assert set(cards) == set(MODELS)
    for name, card in cards.items():
        assert card == tmp_path / "runs" / "eval" / "cards" / name / "README.md"
        front, body = split_card(card)
        metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
        assert metrics["tool_accuracy_heldout"] == COMPARISON[name]["tool_accuracy_heldout"]
        assert f"**{name}** (this model)" in section(body, "Evaluation")
    assert split_card(cards["distilled"])[0]["base_model"] == str(models["teacher"])
    assert split_card(cards["quantized"])[0]["base_model"] == str(models["distilled"])
    assert "base_model" not in split_card(cards["teacher"])[0]
    distilled_metrics = split_card(cards["distilled"])[0]["model-index"][0]["results"][0]["metrics"]
    assert {"type": "final_val_loss", "value": 0.5,
            "name": "final validation loss of the training run"} in distilled_metrics


def _figures_line(body: str) -> str:
    [line] = [x for x in section(body, "Training").splitlines() if x.startswith("Run figures:")]
    return line


def test_quantized_cards_state_their_own_kind_and_true_counts(saved, tmp_path):
    from safetensors.torch import load_file

    from lmpipe.quant.packing import INT8_FILE
    from lmpipe.runs.quantize import quantize_run

    folder, model = saved
    unused = tmp_path / "unused"
    quantize_run(Params(quantize={"method": "ptq"}), folder, tmp_path / "quantize", unused, unused,
                 unused, unused)
    # counted independently: int8 codes in the compact file; the source's linears but lm_head
    codes = load_file(tmp_path / "quantize" / "int8" / INT8_FILE)
    int8_count = sum(t.numel() for t in codes.values() if t.dtype == torch.int8)
    ternary_count = sum(m.weight.numel() for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert int8_count == ternary_count == 4 * 16 * 16 + 3 * 16 * 64

    _, int8 = split_card(tmp_path / "quantize" / "int8" / "README.md")
    assert (_figures_line(int8)
            == f"Run figures: quantized linear layers 7, int8 weights {int8_count:,}.")
    assert "ternary" not in int8
    _, ternary = split_card(tmp_path / "quantize" / "model" / "README.md")
    assert (_figures_line(ternary)
            == f"Run figures: quantized linear layers 7, ternary weights {ternary_count:,}.")
    for body in (int8, ternary):
        facts = dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", body, re.MULTILINE))
        assert facts["parameters"] == f"{count_parameters(model):,}"
    assert "transformers loads the dequantized float32 weights" in section(int8, "Usage")
    assert "BitNet integration" in section(ternary, "Usage")


def test_qat_card_counts_come_from_the_packed_weights(tokenizer, tmp_path):
    # runs.py writes the QAT card with the training summary (no quantization counts); an untied,
    # quantized 265-row head packs into 67 x 4 rows, which must not count as 268
    from lmpipe.model.export import export_ternary

    model = build_model(TINY_MODEL.model_copy(update={"tie_embeddings": False}), seed=0,
                        tokenizer=tokenizer).eval()
    export_ternary(model, tokenizer, tmp_path / "model", skip_modules=[])
    _, body = split_card(write_model_card(tmp_path / "model", name="quantized", stage="quantize",
                                          params=Params().model_dump(mode="json"),
                                          summary={"steps": 3, "final_val_loss": 2.5}))
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linears == 4096 + 265 * 16
    assert _figures_line(body) == ("Run figures: steps 3, final val loss 2.5, quantized linear "
                                   f"layers 8, ternary weights {linears:,}.")
    facts = dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", body, re.MULTILINE))
    assert facts["parameters"] == f"{count_parameters(model):,}"
    assert "transformers cannot load this directory" in section(body, "Usage")
    assert "lm_head" in section(body, "Usage")
