"""End to end: the whole DVC pipeline, driven by the Prefect flow, on a tiny world in a temp copy.

Trains real (tiny) models, then checks the metrics are sane, that a second `dvc repro` runs
nothing, that a params change reruns exactly the stages downstream of it, and that bad params
fail before any compute.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.project_copy import copy_project, pipeline_env, run_checked

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TINY = {
    "world": {"people": 60, "heldout_people": 12, "conversations_per_person": 1},
    # max_seq_len 512: the world's three-question conversations are ~330 tokens
    "teacher": {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 512},
                "train": {"steps": 60, "batch_size": 16, "lr": 0.01, "warmup_steps": 5,
                          "log_every": 10, "eval_every": 30, "eval_people": 4}},
    "student": {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 512},
                "train": {"steps": 30, "batch_size": 16, "warmup_steps": 5, "log_every": 10,
                          "eval_people": 0}},
    "distill": {"train": {"steps": 30, "batch_size": 16, "warmup_steps": 5, "log_every": 10,
                          "eval_people": 0}},
    "quantize": {"train": {"steps": 20, "batch_size": 16, "warmup_steps": 2, "log_every": 10,
                           "qat_warmup_steps": 10, "eval_people": 0}},
    "eval": {"trained_people": 8, "heldout_people": 8, "max_new_tokens": 40,
             "conversations": 3, "conversation_turns": 3, "conversation_branches": 1,
             # ~10 KB: the conversation cache pages out to the eval's run folder and back
             "conversation_cache_mb": 0.01},
}


def _merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("e2e")
    work = copy_project(tmp / "project", ("dvc.yaml", "stages", "flows", "lmpipe"))
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pipeline_env(tmp)
    run_checked(["dvc", "init", "--no-scm", "-q"], work, env)
    run_checked([sys.executable, "flows/pipeline.py", "--workdir", str(work)], work, env)
    return work, env


def test_every_stage_produced_its_outputs(project):
    work, _ = project
    for path in ["data/world/people.duckdb", "data/tokens/train.tokens.bin",
                 "data/teacher_cache/manifest.json", "runs/teacher/model/model.safetensors",
                 "runs/student/model/tokenizer.json", "runs/distill/curve.csv",
                 "runs/quantize/quantization.json", "runs/eval/evals.jsonl",
                 "store/lmpipe.duckdb", "reports/index.html"]:
        assert (work / path).is_file(), path
    for run in ("teacher", "student", "distill", "quantize", "eval"):
        summary = json.loads((work / "runs" / run / "summary.json").read_text())
        assert summary["status"] == "completed", run
        env = json.loads((work / "runs" / run / "env.json").read_text())
        assert env["torch"].startswith("2.13") and env["ended_at"]


def test_training_really_learned(project):
    work, _ = project
    summary = json.loads((work / "runs" / "teacher" / "summary.json").read_text())
    assert summary["initial_val_loss"] > 5.0  # ~ln(265) for an untrained model
    assert summary["final_val_loss"] < 0.6 * summary["initial_val_loss"]
    records = [json.loads(line) for line in (work / "runs/teacher/metrics.jsonl").open()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30, 40, 50, 60]
    assert {"tokens", "lr", "grad_norm", "tokens_per_s", "step_time_s", "rss_mb"} <= set(steps[0])
    assert steps[-1]["tokens"] > steps[0]["tokens"] > 0


def test_eval_metrics_cover_every_model(project):
    work, _ = project
    table = json.loads((work / "metrics" / "eval.json").read_text())
    assert list(table) == ["teacher", "student", "distilled", "quantized", "quantized_ptq", "int8"]
    for figures in table.values():
        for key in ("val_loss", "val_ppl", "recall_trained", "tool_accuracy_trained",
                    "tool_accuracy_heldout"):
            assert key in figures
        assert figures["val_ppl"] == pytest.approx(2.718281828 ** figures["val_loss"], rel=1e-4)
        # byte tokenizer: a target is one byte, a special token (<|end|>, <|eos|>) 0 bytes
        assert 1.0 <= figures["val_bpb"] * 0.693147 / figures["val_loss"] < 1.25
    assert table["teacher"]["val_loss"] < table["student"]["val_loss"]
    assert table["quantized"]["parameters"] == table["distilled"]["parameters"]
    # packed 2 bits a linear weight (the embedding stays float): smaller than int8, than float
    assert table["quantized_ptq"]["weight_bytes"] == table["quantized"]["weight_bytes"]
    assert table["quantized"]["weight_bytes"] < table["int8"]["weight_bytes"] < \
        table["distilled"]["weight_bytes"]
    exports = json.loads((work / "runs/quantize/quantization.json").read_text())["exports"]
    assert exports["quantized"]["method"] == "bitnet-qat" and exports["quantized_ptq"]["ratio"] < 1 / 15


def test_store_and_report(project):
    work, _ = project
    with duckdb.connect(str(work / "store/lmpipe.duckdb"), read_only=True) as con:
        runs = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
        assert runs == {r: "completed" for r in ("teacher", "student", "distill", "quantize", "eval")}
        models = {m for (m,) in con.execute("SELECT DISTINCT model FROM evals").fetchall()}
        assert models == {"teacher", "student", "distilled", "quantized", "quantized_ptq", "int8"}
        assert con.execute("SELECT count(*) FROM metrics WHERE run_id='teacher' AND name='loss'"
                           ).fetchone()[0] == 6
        accuracy = con.execute("SELECT name, list(step ORDER BY step) FROM metrics WHERE "
                               "run_id='teacher' AND name IN ('recall', 'tool_accuracy') "
                               "GROUP BY name").fetchall()
        assert dict(accuracy) == {"recall": [30, 60], "tool_accuracy": [30, 60]}  # at each eval
        # conversation trees: 3 people a split, 3 turns and 1 branch each (at depth 2 or 3)
        turns = con.execute("SELECT split, turn, n FROM evals WHERE model = 'teacher' AND "
                            "metric = 'conversation_accuracy' ORDER BY split, turn NULLS FIRST"
                            ).fetchall()
        for split in ("heldout", "trained"):
            rows = [(t, n) for s, t, n in turns if s == split]
            assert [t for t, _ in rows] == [None, 1, 2, 3] and rows[0][1] == 12
            assert rows[1][1] == 3 and rows[2][1] + rows[3][1] == 9
        paged = con.execute("SELECT metric, value FROM evals WHERE model = 'teacher' AND "
                            "metric LIKE 'prefix_cache_paged_%' AND split = 'heldout'").fetchall()
        assert len(paged) == 2 and all(value > 0 for _, value in paged)
    assert not list((work / "runs/eval").glob("kv-pages-*"))  # the pages went with the cache
    table = json.loads((work / "metrics/eval.json").read_text())
    assert "conversation_accuracy_heldout" in table["teacher"]  # the per-turn rows stay out
    assert not any("turn" in key for key in table["teacher"])
    html = (work / "reports/index.html").read_text()
    assert "quantized" in html and "<script src=\"http" not in html
    distillation = (work / "reports/distillation.html").read_text()
    assert "distillation.html" in html
    assert "<h2>Distillation</h2>" in distillation and "loss_attention_kl" in distillation
    assert "Accuracy as a conversation grows" in distillation


def test_distill_logs_each_term_and_refuses_a_cache_of_another_teacher(project, tmp_path):
    work, env = project
    records = [json.loads(line) for line in (work / "runs/distill/metrics.jsonl").open()]
    assert {"loss_forward_kl", "loss_ce", "loss_attention_kl"} <= set(records[-1])
    manifest = json.loads((work / "data/teacher_cache/manifest.json").read_text())
    assert manifest["attention_layers"] == [1] and manifest["bytes_per_token"] < 128
    stale = tmp_path / "stale"
    shutil.copytree(work, stale)
    shutil.copy(stale / "runs/student/model/model.safetensors",
                stale / "runs/teacher/model/model.safetensors")  # as if the teacher was retrained
    result = run_checked([sys.executable, "-m", "stages.distill"], stale, env, check=False)
    assert result.returncode == 2
    assert "teacher_sha256 is" in result.stderr and "rebuild it" in result.stderr


def test_second_repro_runs_nothing_and_a_param_change_reruns_downstream(project):
    work, env = project
    again = run_checked(["dvc", "repro"], work, env)
    assert "Running stage" not in again.stdout
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["distill"]["temperature"] = 2.0
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run_checked(["dvc", "repro"], work, env).stdout
    ran = {line.split("'")[1] for line in rerun.splitlines() if line.startswith("Running stage")}
    # validate reads the whole file; its unchanged output reruns nothing by itself
    # and the cache: at T != 1 it stores the teacher's tempered tail mass
    assert ran == {"validate", "teacher_cache", "distill", "quantize", "eval", "index", "report"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checksums(work: Path) -> dict[str, str]:
    """Every file (hidden ones too) under the folders the pipeline writes."""
    return {str(p.relative_to(work)): _sha256(p)
            for top in ("data", "runs", "store", "metrics", "reports")
            for p in sorted((work / top).rglob("*")) if p.is_file()}


def _set(params: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _trained_steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]


def test_a_code_or_data_change_retrains_every_step(project, tmp_path):
    """`runs/teacher` is a persistent output: a rerun after a code or data change must not resume
    the old run's final checkpoint and report it as a new model."""
    work, env = project
    copy = tmp_path / "changed"
    shutil.copytree(work, copy)
    teacher = copy / "runs/teacher"
    models = [_sha256(teacher / "model/model.safetensors")]
    # a line of training code that dvc.yaml lists: halve the learning rate
    schedule = copy / "lmpipe/train/schedule.py"
    code = schedule.read_text()
    assert "    return base_lr * (min_lr_ratio" in code
    schedule.write_text(code.replace("    return base_lr * (min_lr_ratio",
                                     "    return 0.5 * base_lr * (min_lr_ratio"))
    # and then the data: ten more people
    params = yaml.safe_load((copy / "params.yaml").read_text())
    for change in ("code", "data"):
        if change == "data":
            params["world"]["people"] += 10
            (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        ran = run_checked(["dvc", "repro", "train@teacher"], copy, env).stdout
        assert "Running stage 'train@teacher'" in ran, change
        summary = json.loads((teacher / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["resumed_from"] is None, change
        assert _trained_steps(teacher) == [10, 20, 30, 40, 50, 60], change
        models.append(_sha256(teacher / "model/model.safetensors"))
        assert models[-1] != models[-2], f"{change}: the model did not change"
    assert json.loads((teacher / "params.json").read_text())["world"]["people"] == 70
    assert not (copy / "runs/.staging").exists()  # published, nothing left behind


def test_a_killed_new_run_leaves_the_previous_run_intact_and_resumes(project, tmp_path):
    work, env = project
    copy = tmp_path / "killed"
    shutil.copytree(work, copy)
    student = copy / "runs/student"
    before = {k: v for k, v in _checksums(copy).items() if k.startswith("runs/student/")}
    overrides = ["student.train.lr=0.002", "student.train.checkpoint_every=5"]  # a new run
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "student", *overrides],
                            cwd=copy, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoints = copy / "runs/.staging/student/checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and any(p.name.startswith("step_")
                                            for p in checkpoints.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    after = {k: v for k, v in _checksums(copy).items() if k.startswith("runs/student/")}
    assert after == before  # the previous run, every byte of it
    run_checked([sys.executable, "-m", "stages.train", "student", *overrides], copy, env)
    summary = json.loads((student / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] in (5, 10, 15, 20, 25)
    assert json.loads((student / "params.json").read_text())["student"]["train"]["lr"] == 0.002
    assert _trained_steps(student) == [10, 20, 30]
    assert not (copy / "runs/.staging").exists()


def test_a_diverging_run_fails_loudly_and_replaces_nothing(project, tmp_path):
    work, env = project
    copy = tmp_path / "diverged"
    shutil.copytree(work, copy)
    before = _checksums(copy)
    result = run_checked([sys.executable, "-m", "stages.train", "student",
                          "student.train.lr=1.0e+12"], copy, env, check=False)
    assert result.returncode == 3 and "diverged at step" in result.stderr
    staged = copy / "runs/.staging/student"
    summary = json.loads((staged / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["failed_at_step"] >= 1
    assert not (staged / "model").exists()  # nothing non-finite saved as a model
    assert {k: v for k, v in _checksums(copy).items() if not k.startswith("runs/.staging/")} \
        == before


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` rows by experiment name: {name: {"params": ..., "metrics": ...}}."""
    rows = {}

    def visit(node: dict) -> None:
        data = node.get("data") or {}
        name = node.get("name") or data.get("name") or node.get("rev") or data.get("rev")
        if data:
            rows[name] = {"params": data.get("params", {}), "metrics": data.get("metrics", {})}
        for child in node.get("experiments") or []:
            for rev in child.get("revs", [child]):
                visit(rev)

    for baseline in shown:
        visit(baseline)
    return rows


def test_dvc_experiments_carry_their_metrics_without_the_venv_on_path(project, tmp_path):
    """A user's git clone: `.venv/bin/dvc exp run` with nothing activated runs the stages with the
    project's .venv, and `dvc exp show` reads every experiment's eval metrics."""
    work, env = project
    repo = tmp_path / "repo"
    shutil.copytree(work, repo, symlinks=True)
    config = repo / ".dvc" / "config"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if "no_scm" not in line))
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    (repo / ".venv").symlink_to(BIN.parent)                # the project's venv, as `make` makes it
    bare = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "LMPIPE_PYTHON")}
    bare.update(PATH="/usr/bin:/bin", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    assert run_checked(["sh", "-c", "command -v python || true"], repo, bare).stdout.strip() != \
        str(BIN / "python")                                # nothing of the venv on PATH
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "baseline"]):
        run_checked(["git", *args], repo, bare)
    dvc = str(repo / ".venv" / "bin" / "dvc")
    for name, steps in (("short", 20), ("long", 40)):
        run_checked([dvc, "exp", "run", "-n", name, "-S", f"student.train.steps={steps}"], repo,
                    bare)
    rows = _experiments(json.loads(run_checked([dvc, "exp", "show", "--json"], repo, bare).stdout))
    tables = {}
    for name, steps in (("short", 20), ("long", 40)):
        assert rows[name]["params"]["params.yaml"]["data"]["student"]["train"]["steps"] == steps
        tables[name] = rows[name]["metrics"]["metrics/eval.json"]["data"]
        assert set(tables[name]) == {"teacher", "student", "distilled", "quantized",
                                     "quantized_ptq", "int8"}
    # the last experiment's results are in the workspace: its row is what its eval wrote
    assert tables["long"] == json.loads((repo / "metrics/eval.json").read_text())
    # the first row holds its own experiment's results: another student, the same teacher
    assert tables["short"]["teacher"] == tables["long"]["teacher"]
    assert tables["short"]["student"]["val_loss"] != tables["long"]["student"]["val_loss"]


def test_the_flow_runs_what_changed_and_nothing_on_an_up_to_date_workspace(project, tmp_path):
    from flows.pipeline import plan

    work, env = project
    order, todo = plan(work)
    assert todo == [] and order[0] == "validate" and order[-1] == "report" and len(order) == 11
    out = run_checked([sys.executable, "flows/pipeline.py", "--workdir", str(work)], work,
                      env).stdout
    assert "is up to date" in out and "Running stage" not in out
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    with open(copy / "lmpipe/report/page.py", "a") as code:  # a change only the report sees
        code.write("\n# changed\n")
    assert plan(copy) == (order, ["report"])


def test_dvc_plots_render_offline(project, tmp_path):
    """`dvc plots show` with the template `make setup` installs: Vega inlined, nothing fetched."""
    work, env = project
    copy = tmp_path / "plots"
    shutil.copytree(work, copy, symlinks=True)
    run_checked(["dvc", "plots", "show", "-o", str(tmp_path / "cdn")], copy, env)
    assert 'src="https://cdn.jsdelivr.net' in (tmp_path / "cdn/index.html").read_text()  # DVC's own
    run_checked([sys.executable, "-m", "lmpipe.report.dvc_plots", str(copy)], copy, env)
    run_checked(["dvc", "plots", "show", "-o", str(tmp_path / "offline")], copy, env)
    html = (tmp_path / "offline/index.html").read_text()
    assert "src=\"http" not in html and "src='http" not in html and "cdn.jsdelivr" not in html
    assert "vega-embed, Vega-Lite and Vega, inlined" in html
    plots = yaml.safe_load((copy / "dvc.yaml").read_text())["plots"]
    assert html.count("vegaEmbed('#") == len(plots)       # one chart per plot of dvc.yaml


def test_saved_tokenizers_are_the_tokenize_stage_s_whatever_the_eval_schedule(project):
    """The teacher's last step is an eval step with generation (left padding): its saved
    tokenizer still carries no padding state and has the tokenize stage's identity, so the
    teacher cache and distillation accept it (the pipeline ran end to end)."""
    from lmpipe.core.artifacts import tokenizer_identity

    work, _ = project
    assert 60 % 30 == 0  # TINY: teacher steps 60, eval_every 30, eval_people 4
    saved = json.loads((work / "runs/teacher/model/tokenizer.json").read_text())
    assert saved.get("padding") is None and saved.get("truncation") is None
    assert tokenizer_identity(work / "runs/teacher/model") == \
        tokenizer_identity(work / "data/tokens/tokenizer")
    assert (work / "runs/distill/summary.json").is_file()



# (changes to params.yaml, a fragment the error must contain). Most are refused by the `validate`
# stage before DVC runs anything; those that only the data can reveal (sequence lengths, batch
# sizes) by the stage itself, before it writes anything.
INVALID = [
    ({"teacher.train.stepz": 5}, "teacher.train.stepz"),
    ({"world.people": "many"}, "world.people"),
    ({"world.people": 0}, "world.people"),
    ({"world.people": 100_000}, "world.people"),
    ({"world.heldout_people": -1}, "world.heldout_people"),
    ({"world.tool_dialogs": False}, "world"),
    ({"teacher_cache.top_k": 999}, "teacher_cache.top_k"),
    ({"extra_section": {"a": 1}}, "extra_section"),
    ({"eval.trained_people": 10_000}, "eval.trained_people"),
    ({"eval.heldout_people": 5_000}, "eval.heldout_people"),
    ({"teacher.train.eval_people": 5_000}, "teacher.train.eval_people"),
    ({"distill.objective": {"skew_reverse_kl": 1.0}, "distill.skew_alpha": 0.0,
      "distill.missing_mass": "zero"}, "skew_reverse_kl"),
    ({"distill.objective": {"reverse_kl": 1.0}, "distill.missing_mass": "zero"}, "reverse_kl"),
    ({"distill.objective": {}}, "distill.objective"),
    ({"distill.objective": {"bogus": 1.0}}, "bogus"),
    ({"distill.objective": {"forward_kl": -1.0, "ce": 1.0}}, "forward_kl"),
    ({"distill.layers": "middle"}, "distill.layers"),
    ({"distill.temperature": 0}, "distill.temperature"),
    ({"distill.gradient_conflict": "pcgrad", "distill.objective": {"ce": 1.0}}, "pcgrad"),
    ({"distill.freeze_embeddings": True}, "freeze_embeddings"),
    ({"data.cache_dir": "../somewhere"}, "data.cache_dir"),
    ({"data.source": "corpus"}, "data.path"),
    ({"data.source": "corpus", "data.path": "/no/such/corpus.txt"}, "data.path"),
    ({"eval.harness_tasks": ["no_such_task_xyz"]}, "no_such_task_xyz"),
    ({"tokenize.kind": "wordpiece"}, "tokenize.kind"),
    ({"tokenize.kind": "bpe"}, "tokenize.vocab_size"),
    ({"tokenize.kind": "hf_dir"}, "tokenize.path"),
    ({"tokenize.val_fraction": 1.5}, "tokenize.val_fraction"),
    ({"teacher.model.n_heads": 3}, "n_heads"),
    ({"teacher.pretrained": "/no/such/model"}, "teacher.pretrained"),
    ({"teacher.train.sampling": "windows", "teacher.train.block_size": 600}, "block_size"),
    ({"student.train.lr": -1.0}, "student.train.lr"),
    ({"student.train.optimizer": "adam"}, "student.train.optimizer"),
    ({"teacher.train.device": "tpu"}, "teacher.train.device"),
    ({"teacher.train.profile_steps": [5, 2]}, "profile_steps"),
    ({"quantize.method": "gptq"}, "quantize.method"),
    # only the data can tell: refused by the stage, before it writes anything
    ({"teacher.model.max_seq_len": 32}, "teacher.model.max_seq_len"),
    ({"student.model.max_seq_len": 32}, "student.model.max_seq_len"),
    ({"teacher.train.batch_size": 10_000}, "teacher.train.batch_size"),
]


# only the data can tell these (the last of INVALID): refused by their stage, not by validate
DATA_DEPENDENT = INVALID[-3:]
# through a whole `dvc repro`: an unknown key, an unknown section, a machine check, a cross-field
# check, and every data-dependent case
THROUGH_DVC = [INVALID[0], INVALID[7], INVALID[22], INVALID[11], *DATA_DEPENDENT]


def test_invalid_params_are_refused_and_touch_nothing(project, tmp_path):
    """Every invalid params.yaml is refused with the key named: each one by the validate stage's
    own check (the parameters and what they ask of the machine, in this process, on the project's
    copy), and a sample plus every case only the data can tell through a fresh `dvc repro`, with
    every file under data/ runs/ store/ metrics/ reports/ byte-identical afterwards. Every stage
    depends on validate's output, so a refusal there runs nothing for any of them."""
    from lmpipe.core.section import ConfigError
    from lmpipe.params.config import validate_params

    assert len(INVALID) >= 30
    work, env = project
    bad = tmp_path / "bad"
    shutil.copytree(work, bad)
    run_checked(["dvc", "repro"], bad, env)  # the copy is up to date (the other tests edit params)
    good = (bad / "params.yaml").read_text()
    before = _checksums(bad)
    failures = []
    for changes, fragment in INVALID:
        params = yaml.safe_load(good)
        for key, value in changes.items():
            _set(params, key, value)
        if (changes, fragment) not in DATA_DEPENDENT:
            try:
                validate_params(params, "params.yaml", environment=True, root=bad)
                failures.append(f"{changes}: accepted by the validate stage's check")
            except ConfigError as error:
                if fragment not in str(error):
                    failures.append(f"{changes}: {fragment!r} not named: {error}")
        if (changes, fragment) not in THROUGH_DVC:
            continue
        (bad / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = run_checked(["dvc", "repro"], bad, env, check=False)
        output = result.stdout + result.stderr
        if result.returncode == 0 or fragment not in output:
            failures.append(f"{changes}: exit {result.returncode}, {fragment!r} not named:\n"
                            f"{output[-1500:]}")
        elif _checksums(bad) != before:
            changed = {k for k in before.keys() | _checksums(bad).keys()
                       if before.get(k) != _checksums(bad).get(k)}
            failures.append(f"{changes}: touched {sorted(changed)[:5]}")
            before = _checksums(bad)
    (bad / "params.yaml").write_text(good)
    assert not failures, "\n".join(failures)


def test_missing_input_file_is_named(tmp_path):
    for name in ("stages", "lmpipe", "params.yaml"):
        src = ROOT / name
        (shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, tmp_path / name))
    result = run_checked([sys.executable, "-m", "stages.tokenize"], tmp_path,
                         pipeline_env(tmp_path), check=False)
    assert result.returncode == 2
    assert "data/world/documents.jsonl: missing input (run the prepare stage first)" in result.stderr
    result = run_checked([sys.executable, "-m", "stages.teacher_cache"], tmp_path,
                         pipeline_env(tmp_path), check=False)
    assert result.returncode == 2 and "runs/teacher/model: not a model directory" in result.stderr


def test_command_line_overrides_reach_the_stage_and_are_validated(tmp_path):
    for name in ("stages", "lmpipe", "params.yaml"):
        src = ROOT / name
        (shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, tmp_path / name))
    env = pipeline_env(tmp_path)
    bad = run_checked([sys.executable, "-m", "stages.prepare", "world.peeple=5"], tmp_path, env,
                      check=False)
    assert bad.returncode == 2 and "unknown key 'world.peeple'" in bad.stderr
    # every stage cross-checks the whole file: the eval samples must fit the smaller world
    run_checked([sys.executable, "-m", "stages.prepare", "world.people=7", "world.heldout_people=2",
                 "eval.trained_people=7", "eval.heldout_people=2",
                 *(f"{s}.train.eval_people=0"
                   for s in ("teacher", "student", "distill", "quantize"))],
                tmp_path, env)
    assert json.loads((tmp_path / "data/world/world.json").read_text())["documents"] == 7 * 6


def test_a_local_corpus_with_a_trained_bpe_runs_the_whole_pipeline(tmp_path):
    work = tmp_path / "corpus-project"
    work.mkdir()
    for name in ("dvc.yaml", "stages", "lmpipe"):
        src = ROOT / name
        (shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, work / name))
    corpus = tmp_path / "notes.jsonl"
    lines = [f"Note {i}: the {w} fox jumps over {i % 7} lazy dogs near the {w} river."
             for i, w in enumerate(["red", "brown", "quick", "slow", "grey"] * 40)]
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in lines + lines[:20]))
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    params = _merge(params, {"data": {"source": "corpus", "path": str(corpus), "format": "jsonl",
                                      "field": "body"},
                             "tokenize": {"kind": "bpe", "vocab_size": 400, "loss_on": "all"},
                             "teacher_cache": {"top_k": 4}})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pipeline_env(tmp_path)
    run_checked(["dvc", "init", "--no-scm", "-q"], work, env)
    run_checked(["dvc", "repro"], work, env)
    world = json.loads((work / "data/world/world.json").read_text())
    assert world["documents"] == 200 and world["duplicates_dropped"] == 20
    assert json.loads((work / "data/tokens/meta.json").read_text())["vocab_size"] == 400
    table = json.loads((work / "metrics/eval.json").read_text())
    assert set(table) == {"teacher", "student", "distilled", "quantized", "quantized_ptq", "int8"}
    for figures in table.values():
        assert "val_loss" in figures and not any(k.startswith("tool") for k in figures)
    teacher = json.loads((work / "runs/teacher/summary.json").read_text())
    assert teacher["final_val_loss"] < 0.6 * teacher["initial_val_loss"]
    logged = {k for line in (work / "runs/teacher/metrics.jsonl").open() for k in json.loads(line)}
    assert "val_loss" in logged and not logged & {"recall", "tool_accuracy"}  # eval_people is idle without a people world


@pytest.mark.skipif(not (ROOT.parent / "shared/data/tinyshakespeare.txt").is_file(),
                    reason="../shared/data/tinyshakespeare.txt absent")
def test_prepare_reads_a_verified_local_shakespeare(tmp_path):
    for name in ("stages", "lmpipe", "params.yaml"):
        src = ROOT / name
        (shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, tmp_path / name))
    local = ROOT.parent / "shared/data/tinyshakespeare.txt"
    run_checked([sys.executable, "-m", "stages.prepare", "data.source=shakespeare",
                 f"data.path={local}"], tmp_path, pipeline_env(tmp_path))
    world = json.loads((tmp_path / "data/world/world.json").read_text())
    assert world["source"] == "shakespeare" and world["documents"] > 5000
    assert world["bytes"] > 1_000_000
    first = json.loads((tmp_path / "data/world/documents.jsonl").open().readline())["text"]
    assert first.startswith("First Citizen:")  # no BOS in the text: the tokenizer adds it
