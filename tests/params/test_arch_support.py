"""Stages refuse, before any compute, what they cannot yet do with a model that is not llama
(lmpipe/params/arch_support.py), naming the key; a recipe that trains and evaluates only is not
refused for the stages it never runs."""

import pytest

from lmpipe.core.archs import ARCHS
from lmpipe.core.section import ConfigError
from lmpipe.params.arch_support import (
    COMPILE_FINDINGS,
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
    ({"compile": True}, "teacher.train.compile: true: compiled it runs ~2x slower than eager"),
])
def test_a_recurrent_models_own_run_refuses_llama_only_switches(switch, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r".*arch = 'mamba'"):
        validate_params({"teacher": {"model": {"arch": "mamba"}, "train": switch}})
    validate_params({"teacher": {"model": {"arch": "llama"}, "train": switch}})


def test_every_recurrent_arch_refuses_compile_with_its_own_measured_finding():
    assert set(COMPILE_FINDINGS) == {name for name, arch in ARCHS.items() if arch.recurrent}
    with pytest.raises(ConfigError, match=r"compile: true: compiled it runs ~2x slower than eager "
                       r"\(bench/compile_archs\.py: 135 against 65 ms"):
        validate_params({"teacher": {"model": {"arch": "mamba2"}, "train": {"compile": True}}})
    with pytest.raises(ConfigError, match=r"student\.train\.compile: true: transformers' scan "
                       r"compiles unrolled over the sequence, so every new batch length"):
        validate_params({"student": {"model": {"arch": "hawk"}, "train": {"compile": True}}})


@pytest.mark.parametrize("arch", ["mamba", "hawk"])
def test_probes_run_on_every_arch_at_the_sites_it_has(arch):
    validate_params({"teacher": {"model": {"arch": arch}, "train": {"probes": {"enabled": True}}}})
    validate_params({"teacher": {"model": {"arch": arch},
                                 "train": {"probes": {"enabled": True,
                                                      "points": ["mixer", "residual"]}}}})


@pytest.mark.parametrize("arch, points, refused, own", [
    ("mamba", ["attention", "residual"], "'attention'",
     ["embeddings", "mixer", "residual", "logits"]),
    ("hawk", ["mixer", "attention_weights"], "'attention_weights'",
     ["embeddings", "mixer", "mlp", "residual", "logits"]),
    ("llama", ["mixer"], "'mixer'",
     ["embeddings", "attention", "attention_weights", "mlp", "residual", "logits"]),
])
def test_a_probe_site_the_arch_lacks_is_refused_naming_the_field(arch, points, refused, own):
    with pytest.raises(ConfigError) as caught:
        validate_params({"student": {"model": {"arch": arch},
                                     "train": {"probes": {"enabled": True, "points": points}}}})
    assert (f"student.train.probes.points = {points!r} lists {refused}, a site "
            f"student.model.arch = {arch!r} does not have; expected some of {own} for arch "
            f"{arch}, or null for all of them") in str(caught.value)
    # probes off: the list is never used
    validate_params({"student": {"model": {"arch": arch}, "train": {"probes": {"points": points}}}})


def test_training_and_eval_of_a_recurrent_teacher_are_not_refused():
    p = params(teacher="hawk")
    assert list(stage_problems(p, "train")) == [] and list(stage_problems(p, "eval")) == []


@pytest.mark.parametrize("arch", ["mamba", "hawk"])
def test_qat_of_a_recurrent_model_is_not_refused(arch):
    validate_params({"teacher": {"model": {"arch": arch}, "train": {"qat": True}}})


def test_every_stage_after_training_runs_recurrent_models():
    """teacher_cache, distill and quantize run any pair of archs (lmpipe/model/hidden_states.py,
    lmpipe/quant/float_linears.py)."""
    for teacher, student in (("mamba", "hawk"), ("llama", "mamba"), ("hawk", "llama")):
        assert pipeline_problems(params(teacher=teacher, student=student)) == []
    assert pipeline_problems(params()) == []


def test_attention_kl_and_cached_attention_rows_are_refused_for_an_attention_free_model():
    p = Params.model_validate({**TOOL_ONLY, "teacher": {"model": {"arch": "hawk"}},
                               "student": {"model": {"arch": "mamba"}},
                               "distill": {"objective": {"forward_kl": 1.0, "attention_kl": 0.5},
                                           "layers": "last"},
                               "teacher_cache": {"attention_layers": [2]}})
    lines = [problem.line("params.yaml") for problem in pipeline_problems(p, ("teacher_cache",
                                                                              "distill"))]
    fix = "expected 0 (hidden_mse or hidden_cosine instead) for arch"
    assert lines == [
        ("params.yaml: distill.objective.attention_kl = 0.5, but teacher.model.arch = 'hawk' has "
         f"no attention map to compare; {fix} hawk"),
        ("params.yaml: teacher_cache.attention_layers = [2], but teacher.model.arch = 'hawk' has "
         "no attention; expected [] or auto for arch hawk"),
        ("params.yaml: distill.objective.attention_kl = 0.5, but student.model.arch = 'mamba' has "
         f"no attention map to compare; {fix} mamba")]
    llama = Params.model_validate({**TOOL_ONLY, "distill": p.distill.model_dump(),
                                   "teacher_cache": {"attention_layers": [2]}})
    assert pipeline_problems(llama, ("teacher_cache", "distill")) == []


def test_eval_runs_every_measure_on_recurrent_models_lm_eval_included():
    p = Params.model_validate({"teacher": {"model": {"arch": "mamba"}},
                               "student": {"model": {"arch": "hawk"}},
                               "world": {"qa_dialogs": True}, "eval": {"knowledge_bits": True,
                               "linear_probe": True, "harness_tasks": ["people"]}})
    assert list(stage_problems(p, "eval")) == []  # tests/eval/test_harness_archs.py
    refuse_unsupported(p, "eval", "params.yaml", evaluated={"teacher", "student"})
