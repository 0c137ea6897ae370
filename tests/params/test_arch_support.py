"""Stages refuse, before any compute, what they cannot yet do with a model that is not llama
(lmpipe/params/arch_support.py), naming the key; a recipe that trains and evaluates only is not
refused for the stages it never runs."""

import pytest

from lmpipe.core.section import ConfigError
from lmpipe.params.arch_support import (
    pipeline_problems,
    refuse_unsupported,
    stage_problems,
)
from lmpipe.params.config import Params, validate_params

TOOL_ONLY = {"world": {"tool_dialogs": True, "qa_dialogs": False, "bios_per_person": 0}}


def params(**models) -> Params:
    return Params.model_validate({**TOOL_ONLY, **{name: {"model": {"arch": arch}}
                                                  for name, arch in models.items()}})


@pytest.mark.parametrize("switch, key", [
    ({"attention": "prefix_lm"}, "teacher.train.attention = 'prefix_lm'"),
    ({"probes": {"enabled": True}}, "teacher.train.probes.enabled: true"),
    ({"qat": True}, "teacher.train.qat: true"),
    ({"compile": True}, "teacher.train.compile: true"),
])
def test_a_recurrent_models_own_run_refuses_llama_only_switches(switch, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r".*arch = 'mamba'"):
        validate_params({"teacher": {"model": {"arch": "mamba"}, "train": switch}})
    validate_params({"teacher": {"model": {"arch": "llama"}, "train": switch}})


def test_training_and_eval_of_a_recurrent_teacher_are_not_refused():
    p = params(teacher="hawk")
    assert list(stage_problems(p, "train")) == [] and list(stage_problems(p, "eval")) == []


def test_stages_that_need_llama_name_the_arch_key_and_the_stage():
    lines = [problem.line("params.yaml") for problem in pipeline_problems(params(teacher="mamba",
                                                                                 student="hawk"))]
    without = "expected llama, or a pipeline without it (dvc repro train eval)"
    distill = "(layer maps and attention_kl assume Llama's blocks)"
    assert lines == [
        ("params.yaml: teacher.model.arch = 'mamba': the teacher_cache stage supports llama only "
         f"so far (its hidden states and attention rows are indexed as Llama's); {without}"),
        (f"params.yaml: teacher.model.arch = 'mamba': the distill stage supports llama only so "
         f"far {distill}; {without}"),
        (f"params.yaml: student.model.arch = 'hawk': the distill stage supports llama only so far "
         f"{distill}; {without}"),
        ("params.yaml: student.model.arch = 'hawk': the quantize stage supports llama only so far "
         f"(the ternary export and packed loading are Llama's); {without}")]
    assert pipeline_problems(params()) == []


def test_eval_refuses_knowledge_bits_probes_and_harness_for_the_models_it_scores():
    p = Params.model_validate({"teacher": {"model": {"arch": "mamba"}},
                               "world": {"qa_dialogs": True},
                               "eval": {"linear_probe": True, "harness_tasks": ["people"]}})
    with pytest.raises(ConfigError) as caught:
        refuse_unsupported(p, "eval", "params.yaml", evaluated={"teacher"})
    keys = [line.split(":")[1].split()[0] for line in str(caught.value).splitlines()]
    assert keys == ["eval.knowledge_bits", "eval.linear_probe", "eval.harness_tasks"]
    refuse_unsupported(p, "eval", "params.yaml", evaluated={"student"})  # a llama: fine
