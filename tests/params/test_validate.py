"""Validation refuses every invalid params.yaml before anything runs: one line per problem naming
the key, the `validate` stage exits 2 without writing, and none of it imports torch."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmpipe.params import checks as params_checks
from lmpipe.params import environment as params_environment
from lmpipe.core.section import ConfigError
from lmpipe.params.config import Params, load_params, validate_params

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())
HAS_LM_EVAL = params_environment.lm_eval_tasks_dir() is not None
needs_lm_eval = pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval not installed")
LOGITS_ONLY = {"distill.objective": {"forward_kl": 1.0}}  # no layer-map or attention constraints


def changed(changes: dict) -> dict:
    """The repo's params.yaml with dotted keys set (sections created as needed)."""
    tree = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def check(changes: dict, environment: bool = False, root: Path = ROOT) -> Params:
    return validate_params(changed(changes), "params.yaml", environment=environment, root=root)


# (changes to params.yaml, text the one-line message must contain)
INVALID = [
    ({"evall": {"seed": 0}}, "unknown key 'evall'; expected 'eval'"),
    ({"teacher.train.stepz": 5},
     "unknown key 'teacher.train.stepz'; expected 'teacher.train.steps'"),
    ({"world.people": "many"}, "world.people: Input should be a valid integer (got 'many')"),
    ({"teacher.train.lr": "1e-3"}, "teacher.train.lr: Input should be a valid number"),
    ({"tokenize.loss_on": "everything"}, "tokenize.loss_on: Input should be 'assistant' or 'all'"),
    ({"teacher": 5}, "params.yaml: teacher: Input should be a valid dictionary"),
    ({"distill.layers": 3.5}, "distill.layers: Input should be a valid string or"),
    ({"distill.objective": {"forwardkl": 1.0}}, "distill.objective.forwardkl: unknown term"),
    ({"teacher.model.d_model": 30}, "teacher.model.n_heads: the head width"),
    ({"student.model.d_ff": 0}, "student.model.d_ff: Input should be greater than or equal to 1"),
    ({"teacher.train.profile_steps": [5, 1]},
     "teacher.train.profile_steps: [5, 1] is not a window"),
    ({"data.source": "corpus"}, "data.path: not set"),
    # vocabulary
    ({"teacher_cache.top_k": 999}, "teacher_cache.top_k = 999 exceeds the vocabulary size (265)"),
    ({"tokenize.kind": "bpe"}, "tokenize.vocab_size: not set"),
    ({"tokenize.kind": "bpe", "tokenize.vocab_size": 100}, "tokenize.vocab_size = 100 is smaller"),
    ({"tokenize.kind": "bpe", "tokenize.vocab_size": 300, "teacher_cache.top_k": 301},
     "teacher_cache.top_k = 301 exceeds the vocabulary size (300)"),
    ({"tokenize.kind": "smollm2", "teacher_cache.top_k": 50_000},
     "teacher_cache.top_k = 50000 exceeds the vocabulary size (49161)"),
    ({"tokenize.kind": "tiktoken"}, "tokenize.path: not set"),
    ({"teacher.pretrained": "smollm2"},
     "teacher.pretrained = 'smollm2' reads SmolLM2's own tokens"),
    # the people world
    ({"world.people": 5000}, "world.people = 5000 plus world.heldout_people = 200 exceeds"),
    ({"world.tool_dialogs": False}, "world.tool_dialogs: false, and so are world.qa_dialogs"),
    ({"eval.trained_people": 1001}, "eval.trained_people = 1001 exceeds world.people (1000)"),
    ({"eval.heldout_people": 201}, "eval.heldout_people = 201 exceeds world.heldout_people (200)"),
    ({"teacher.train.eval_people": 1001}, "teacher.train.eval_people = 1001 exceeds world.people"),
    ({"student.train.eval_people": 1001}, "student.train.eval_people = 1001 exceeds"),
    ({"distill.train.eval_people": 1001}, "distill.train.eval_people = 1001 exceeds"),
    ({"quantize.train.eval_people": 1001}, "quantize.train.eval_people = 1001 exceeds"),
    ({"eval.linear_probe": True, "eval.linear_probe_people": 1001},
     "eval.linear_probe_people = 1001 exceeds world.people (1000)"),
    ({"data.source": "shakespeare", "eval.harness_tasks": ["people"]},
     "eval.harness_tasks: names ['people'], lmpipe's people tasks"),
    # sequence lengths
    ({**LOGITS_ONLY, "teacher.train.sampling": "windows", "teacher.train.block_size": 256},
     "teacher.train.block_size = 256: its windows of block_size + 1 = 257 tokens exceed "
     "teacher.model.max_seq_len (256)"),
    ({**LOGITS_ONLY, "distill.train.sampling": "windows", "distill.train.block_size": 300},
     "distill.train.block_size = 300: its windows of block_size + 1 = 301 tokens exceed "
     "student.model.max_seq_len (256)"),
    ({**LOGITS_ONLY, "quantize.train.sampling": "windows", "quantize.train.block_size": 256},
     "quantize.train.block_size = 256"),
    # losses that are infinite with the tail taken as zero
    ({"distill.objective": {"skew_reverse_kl": 1.0}, "distill.skew_alpha": 0.0,
      "distill.missing_mass": "zero"}, "distill.missing_mass = 'zero' with distill.objective "
     "['skew_reverse_kl']"),
    ({"distill.objective": {"reverse_kl": 1.0}, "distill.missing_mass": "zero"},
     "distill.missing_mass = 'zero'"),
    ({"distill.objective": {"cakld": 1.0, "ce": 1.0}, "distill.missing_mass": "zero"},
     "distill.missing_mass = 'zero' with distill.objective ['cakld']"),
    ({"distill.objective": {"jsd": 1.0}, "distill.jsd_beta": 1.0, "distill.missing_mass": "zero"},
     "distill.missing_mass = 'zero' with distill.objective ['jsd']"),
    # layer maps, widths and the teacher cache
    ({"distill.layers": [[1, 3]]}, "distill.layers: pair [1, 3] is out of range"),
    ({"distill.layers": [[3, 1]]}, "distill.layers: pair [3, 1] is out of range"),
    ({"student.model.n_layers": 3}, "distill.layers = 'all' pairs block i with block i"),
    ({"distill.layers": "last-3"}, "distill.layers = 'last-3' asks for 3 layers"),
    ({"distill.layers": [[0, 0]]}, "distill.layers = [[0, 0]] pairs layer 0"),
    ({"distill.objective": {"hidden_mse": 1.0}, "distill.projector": "identity"},
     "distill.projector = 'identity' cannot map"),
    ({"distill.objective": {"hidden_mse": 1.0}, "distill.projector": "orthogonal",
      "teacher.model.d_model": 32}, "distill.projector = 'orthogonal' cannot map 48 dimensions"),
    ({"distill.copy_embeddings": True},
     "distill.copy_embeddings: true, but the teacher is 64 wide"),
    ({"distill.copy_lm_head": True, "student.model.d_model": 64},
     "distill.copy_lm_head: true, but the student ties its lm head"),
    ({**LOGITS_ONLY, "teacher_cache.hidden_layers": [0, 5]},
     "teacher_cache.hidden_layers = [0, 5] names layers [5]"),
    ({"teacher_cache.attention_layers": [2]}, "teacher_cache.attention_layers = [2] lacks teacher "
     "layers [1]"),
    ({"teacher_cache.attention_layers": [1, 2], "teacher.train.sampling": "windows",
      "teacher.train.block_size": 128}, "teacher_cache.attention_layers = [1, 2] needs whole "
     "documents"),
    ({"teacher.train.sampling": "windows", "teacher.train.block_size": 128},
     "teacher.train.sampling = 'windows': the teacher cache then holds no attention rows"),
    ({"distill.train.sampling": "windows", "distill.train.block_size": 128},
     "distill.train.sampling = 'windows', but attention_kl from the cache needs whole documents"),
    # training switches
    ({"teacher.train.probes": {"enabled": True}, "teacher.train.compile": True},
     "teacher.train.probes.enabled: true with train.compile: true"),
    ({"teacher.train.probes": {"enabled": True, "layers": [2]}},
     "teacher.train.probes.layers = [2] names blocks [2]"),
    ({"quantize.skip_modules": ["layers", "lm_head"]},
     "quantize.skip_modules = ['layers', 'lm_head'] matches every linear layer"),
    # paths
    ({"data.cache_dir": "../somewhere"},
     "data.cache_dir = '../somewhere' leads outside the project"),
    ({"data.cache_dir": "data/../../x"}, "data.cache_dir = 'data/../../x' leads outside"),
]

# what only this machine can answer: files, lm-eval's task list
INVALID_HERE = [
    ({"data.source": "corpus", "data.path": "no/such/corpus.txt"},
     "data.path = 'no/such/corpus.txt' is not a file"),
    ({"data.source": "shakespeare", "data.path": "no/such/input.txt"},
     "data.path = 'no/such/input.txt' is not a file"),
    ({"tokenize.kind": "hf_dir", "tokenize.path": "no/such/dir"},
     "tokenize.path = 'no/such/dir' is not an existing folder"),
    ({"tokenize.kind": "hf_dir", "tokenize.path": "lmpipe"}, "tokenize.path = 'lmpipe' holds no "
     "tokenizer.json"),
    ({"student.pretrained": "no/such/model"}, "student.pretrained = 'no/such/model' is neither"),
    pytest.param({"eval.harness_tasks": ["people", "hellaswagg"]},
                 "eval.harness_tasks: names ['hellaswagg'], which lm-eval does not know",
                 marks=needs_lm_eval),
]


@pytest.mark.parametrize("changes, message", INVALID, ids=lambda v: None if isinstance(v, str)
                         else ",".join(v))
def test_an_invalid_tree_is_refused_in_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as info:
        check(changes)
    text = str(info.value)
    assert text.count("\n") == 0, text
    assert text.startswith("params.yaml: ") and message in text, text
    assert "{" not in text  # never a whole section dumped


@pytest.mark.parametrize("changes, message", INVALID_HERE, ids=lambda v: None if isinstance(v, str)
                         else ",".join(v))
def test_what_this_machine_lacks_is_refused_in_one_line(changes, message):
    check(changes)  # valid as parameters: a sweep point may name a file only its workspace has
    with pytest.raises(ConfigError) as info:
        check(changes, environment=True)
    text = str(info.value)
    assert text.count("\n") == 0 and text.startswith("params.yaml: ") and message in text, text


def test_every_problem_gets_its_own_line():
    with pytest.raises(ConfigError) as info:
        check({"world.people": 5000, "eval.heldout_people": 201, "data.cache_dir": "../x"})
    lines = str(info.value).splitlines()
    assert [line.split()[1] for line in lines] == ["world.people", "eval.heldout_people",
                                                   "data.cache_dir"]


def test_a_long_value_is_never_dumped():
    with pytest.raises(ConfigError) as info:
        check({"quantize.skip_modules": ["layers"] * 40})
    assert len(str(info.value)) < 300 and "..." in str(info.value)


VALID = [
    {},
    {"eval.trained_people": 1000, "eval.heldout_people": 200, "teacher.train.eval_people": 1000},
    {"world.people": 3608, "world.heldout_people": 200},  # exactly the name space
    {"teacher_cache.top_k": 265},
    {"data.source": "shakespeare", "eval.trained_people": 5000},  # people keys idle
    {"quantize.method": "ptq", "quantize.train.eval_people": 5000},  # quantize.train unused
    {"world.tool_dialogs": False, "world.qa_dialogs": True},
    {"distill.objective": {"skew_reverse_kl": 1.0}, "distill.skew_alpha": 0.1,
     "distill.missing_mass": "zero"},
    {"distill.objective": {"reverse_kl": 1.0}, "distill.missing_mass": "zero",
     "distill.teacher": "live"},
    {"distill.objective": {"reverse_kl": 1.0}, "distill.missing_mass": "zero",
     "teacher_cache.top_k": 265},  # the cache holds the whole vocabulary: no tail
    {"distill.objective": {"jsd": 1.0, "skew_kl": 1.0, "tvd": 1.0, "forward_kl": 1.0},
     "distill.jsd_beta": 0.9, "distill.skew_alpha": 0.0, "distill.missing_mass": "zero"},
    {"distill.objective": {"hidden_mse": 1.0}, "distill.layers": [[0, 0], [2, 2]]},
    {**LOGITS_ONLY, "teacher.train.sampling": "windows", "teacher.train.block_size": 255},
    {"teacher.train.sampling": "windows", "teacher.train.block_size": 64,
     "distill.teacher": "live"},
    {"data.cache_dir": "/tmp/lmpipe-cache"},
    {"data.cache_dir": "data/../cache"},
    {"student.train.init_from": "runs/teacher/model"},  # written by the pipeline later
    {"teacher.train.probes": {"enabled": True, "layers": [0, 1]}},
    {"teacher.pretrained": "smollm2", "tokenize.kind": "smollm2"},
]


@pytest.mark.parametrize("changes", VALID, ids=lambda c: ",".join(c) or "params.yaml")
def test_valid_variants_pass(changes):
    check(changes)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml"))
                         + [ROOT / "recipes/in-tool-learning/params.yaml", ROOT / "params.yaml"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_repo_params_and_recipes_are_valid(path):
    load_params(path)


def test_the_repo_params_are_valid_on_this_machine():
    check({}, environment=True)


@needs_lm_eval
@pytest.mark.parametrize("tasks", [["people", "hellaswag"], ["mmlu"], ["mmlu_anatomy"],
                                   ["advanced_ai_risk"], ["AraDiCE_ArabicMMLU_humanities_egy"]])
def test_lm_eval_task_group_and_tag_names_are_known(tasks, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # names only: no dataset cache check
    check({"eval.harness_tasks": tasks}, environment=True)


@needs_lm_eval
def test_preset_tasks_need_their_datasets_in_the_local_cache_offline(tmp_path, monkeypatch):
    from lmpipe.eval.task_names import PRESET_DATASETS

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"eval.harness_tasks: needs datasets that are not in "
                       r"the local Hugging Face datasets cache: cola \(nyu-mll/glue cola\); "
                       r"lmpipe_conll2003 \(eriktks/conll2003 conll2003\)"):
        check({"eval.harness_tasks": ["cola", "val_text", "lmpipe_conll2003"]}, environment=True)
    # the folder `datasets` prepares on a first online load: <namespace>___<name>/<config>/v/hash
    for task in ("cola", "lmpipe_conll2003"):
        repo, [config] = PRESET_DATASETS[task]
        (tmp_path / repo.replace("/", "___") / config / "0.0.0" / "abc").mkdir(parents=True)
    check({"eval.harness_tasks": ["cola", "val_text", "lmpipe_conll2003"]}, environment=True)
    with pytest.raises(ConfigError, match=r"mmlu \(cais/mmlu abstract_algebra, anatomy, "
                       r"astronomy and 54 more\); hendrycks_math"):
        check({"eval.harness_tasks": ["distily"]}, environment=True)


def test_missing_lm_eval_is_named_with_the_extra(monkeypatch):
    monkeypatch.setattr(params_environment, "lm_eval_tasks_dir", lambda: None)
    with pytest.raises(ConfigError, match=r"eval.harness_tasks = \['people'\] needs lm-eval, "
                                          r"which is not installed; expected pip install "
                                          r"'lmpipe\[harness\]'"):
        check({"eval.harness_tasks": ["people"]}, environment=True)


@pytest.mark.parametrize("optimizer, module, extra", [("lion", "lion_pytorch", "lion"),
                                                      ("adamw8bit", "torchao", "lowbit"),
                                                      ("adalomo", "lomo_optim", "lomo")])
def test_an_optimizers_missing_extra_is_named_before_any_compute(monkeypatch, optimizer, module,
                                                                 extra):
    installed = params_environment._installed
    monkeypatch.setattr(params_environment, "_installed", lambda name: name != module
                        and installed(name))
    with pytest.raises(ConfigError, match=rf"distill.train.optimizer: needs {module}, which is "
                                          rf"not installed; expected pip install "
                                          rf"'lmpipe\[{extra}\]'"):
        check({"distill.train.optimizer": optimizer}, environment=True)
    check({"distill.train.optimizer": "adamw"}, environment=True)


def test_task_names_read_every_yaml_spelling():
    text = b"""\
"task": "quoted_task"
group: plain_group  # a comment
tag:
  - listed_tag
- unindented_tag
task:
  - member_defined_elsewhere
"""
    assert params_environment.task_names(text) == {"quoted_task", "plain_group", "listed_tag",
                                              "unindented_tag"}
    assert params_environment.task_names(b"tag: [a, 'b']\ntask: null\n") == {"a", "b"}


# --- the checks agree with the code they stand in for (which imports torch) --------------------

def test_constants_match_the_modules_they_avoid_importing():
    from lmpipe.data import tokenizer, tokenizer_kinds, world
    assert params_checks.BYTE_VOCAB == tokenizer.VOCAB_SIZE
    assert params_checks.BPE_MIN_VOCAB == tokenizer_kinds.BPE_MIN_VOCAB
    assert params_checks.SMOLLM2_GGUF == tokenizer_kinds.SMOLLM2_GGUF
    assert params_checks.name_space() == len(world.FIRST_NAMES) * len(world.LAST_NAMES)


def test_layer_pairs_match_the_distill_layer_maps():
    from lmpipe.distill.layers import layer_pairs

    for spec in ("all", "last", "last-1", "last-2", "last-3", "uniform", [[0, 0], [1, 2]],
                 [[2, 4]], [[3, 1]]):
        for student, teacher in ((2, 2), (2, 4), (3, 2), (1, 1)):
            mine, wrong = params_checks.layer_pairs(spec, student, teacher)
            try:
                theirs = layer_pairs(spec, student, teacher)
            except ConfigError:
                assert wrong, (spec, student, teacher)
            else:
                assert not wrong and mine == theirs, (spec, student, teacher)


@pytest.mark.parametrize("tie", [True, False])
def test_linear_names_match_the_model(tie):
    from torch import nn

    from lmpipe.model.build import build_model
    from lmpipe.model.params import ModelParams

    model_params = ModelParams(d_model=16, n_layers=2, n_heads=2, tie_embeddings=tie)
    model = build_model(model_params, 0)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
              and not (tie and m.weight is model.get_input_embeddings().weight)]
    assert params_checks.linear_names(model_params) == linear


def test_infinite_losses_are_exactly_those_refused():
    """Every logit term on a truncated cache with the tail taken as zero: the check refuses
    exactly the terms whose value is not finite."""
    import torch

    from lmpipe.distill.registry import LOGIT_LOSSES, LossOptions
    from lmpipe.distill.sinkhorn import support_cost, token_cost
    from lmpipe.distill.support import TeacherDistribution, aligned

    torch.manual_seed(0)
    vocab, k = 20, 4
    teacher = torch.log_softmax(torch.randn(3, vocab), -1)
    top = teacher.topk(k, -1)
    cached = TeacherDistribution(top.values, top.indices, None)
    student = torch.log_softmax(torch.randn(3, vocab), -1)
    log_p, log_q = aligned(student, cached, 1.0, "zero")
    for term, loss in LOGIT_LOSSES.items():
        for knob in ({}, {"skew_alpha": 0.0}, {"jsd_beta": 1.0}, {"jsd_beta": 0.0}):
            options = LossOptions(confidence=torch.tensor(0.5), cost=support_cost(
                token_cost(torch.randn(vocab, 4)), top.indices), **knob)
            finite = bool(torch.isfinite(loss(log_p, log_q, options)).all())
            changes = {"distill.objective": {term: 1.0}, "distill.missing_mass": "zero",
                       **{f"distill.{key}": value for key, value in knob.items()}}
            try:
                check(changes)
                refused = False
            except ConfigError:
                refused = True
            assert refused == (not finite), (term, knob)


def test_file_vocabularies_match_the_built_tokenizers(tmp_path):
    from lmpipe.data.tokenizer_kinds import build_tokenizer
    from tests.data.test_tokenizer_kinds import write_tiktoken

    tiktoken_file = write_tiktoken(tmp_path / "tiny.tiktoken")
    pytest.importorskip("tiktoken")
    assert params_environment.file_vocab("tiktoken", tiktoken_file) == \
        len(build_tokenizer("tiktoken", path=tiktoken_file))
    build_tokenizer("byte").save_pretrained(tmp_path / "hf")
    assert params_environment.file_vocab("hf_dir", tmp_path / "hf") == \
        len(build_tokenizer("hf_dir", path=tmp_path / "hf"))
    check({"tokenize.kind": "tiktoken", "tokenize.path": str(tiktoken_file),
           "teacher_cache.top_k": 277}, environment=True)
    with pytest.raises(ConfigError, match=r"teacher_cache.top_k = 278 exceeds the vocabulary "
                                          r"size \(277\) of tokenize.kind tiktoken"):
        check({"tokenize.kind": "tiktoken", "tokenize.path": str(tiktoken_file),
               "teacher_cache.top_k": 278}, environment=True)


# --- the stage ---------------------------------------------------------------------------------

def _stage(project: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = ["-c", code] if code else ["-m", "stages.validate", *args]
    return subprocess.run([sys.executable, *command], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_stage_refuses_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed({"world.people": 5000})))
    result = _stage(tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "lmpipe validate: error: params.yaml: world.people = 5000 plus world.heldout_people = "
        "200 exceeds the 3808 unique names the world can make; expected world.people + "
        "world.heldout_people <= 3808"]
    assert not (tmp_path / ".lmpipe").exists()


def test_the_stage_writes_constant_content_and_takes_overrides(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(BASE))
    assert _stage(tmp_path).returncode == 0
    written = (tmp_path / ".lmpipe/validated.json").read_text()
    assert json.loads(written) == {"params": "params.yaml", "valid": True}
    assert _stage(tmp_path, "teacher.train.steps=3").returncode == 0
    assert (tmp_path / ".lmpipe/validated.json").read_text() == written  # reruns nothing downstream
    assert [p.name for p in (tmp_path / ".lmpipe").iterdir()] == ["validated.json"]
    bad = _stage(tmp_path, "data.cache_dir=../out")
    assert bad.returncode == 2 and "data.cache_dir = '../out'" in bad.stderr


def test_the_stage_imports_neither_torch_nor_transformers(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed(
        {"eval.harness_tasks": ["people", "hellaswag"]} if HAS_LM_EVAL else {})))
    code = ("import sys\nfrom stages.validate import validate\nvalidate()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'lm_eval', 'duckdb') "
            "if m in sys.modules))")
    result = _stage(tmp_path, code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
