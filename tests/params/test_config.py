"""Parameters: bad input fails before compute, naming the key and what was expected."""

from pathlib import Path

import pytest
import yaml

from lmpipe.core.section import ConfigError
from lmpipe.params.config import Params, load_params

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, tree):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.teacher.model.d_model > params.student.model.d_model


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, {"teacher": {"train": {"stepz": 10}}})
    with pytest.raises(ConfigError, match=r"unknown key 'teacher\.train\.stepz'"):
        load_params(path)


def test_wrong_type_is_named_with_the_value(tmp_path):
    path = _write(tmp_path, {"world": {"people": "many"}})
    with pytest.raises(ConfigError, match=r"world\.people: .*integer.*'many'"):
        load_params(path)


def test_bad_choice_lists_allowed_values(tmp_path):
    path = _write(tmp_path, {"tokenize": {"loss_on": "everything"}})
    with pytest.raises(ConfigError, match=r"tokenize\.loss_on.*'assistant' or 'all'"):
        load_params(path)


def test_top_k_larger_than_vocabulary(tmp_path):
    path = _write(tmp_path, {"teacher_cache": {"top_k": 1000}})
    with pytest.raises(ConfigError, match=r"teacher_cache\.top_k = 1000 exceeds the vocabulary size \(265\)"):
        load_params(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: parameters file not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_apply_typed_values_and_are_validated(tmp_path):
    path = _write(tmp_path, {})
    params = load_params(path, ["teacher.train.steps=12", "distill.temperature=2"])
    assert params.teacher.train.steps == 12 and params.distill.temperature == 2.0
    with pytest.raises(ConfigError, match="unknown key 'teacher.train.nope'"):
        load_params(path, ["teacher.train.nope=1"])


def test_heads_must_divide_width():
    with pytest.raises(Exception, match="divisible by n_heads"):
        Params.model_validate({"teacher": {"model": {"d_model": 30, "n_heads": 4}}})


def test_resolved_params_serialize_to_plain_json():
    import json

    tree = Params().model_dump(mode="json")
    assert json.loads(json.dumps(tree)) == tree


def test_runs_checkpoint_every_100_steps_by_default():
    from lmpipe.distill.params import QuantizeParams

    # a killed run loses at most one interval (README "Checkpoints and resume")
    from lmpipe.train.params import TrainParams
    assert TrainParams().checkpoint_every == 100
    assert QuantizeParams().train.checkpoint_every == 100
