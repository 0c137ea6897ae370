"""The one table of architectures (lmpipe/core/archs.py) agrees with what lmpipe builds: the same
`model.arch` names as the model section and the builder, each saved as the model_type the table
says, and the recurrent ones are those without attention."""

import typing

import pytest

from lmpipe.core.archs import ARCHS, RECURRENT_TYPES, arch_of, is_recurrent, model_type
from lmpipe.core.pipeline_models import EXTRA, MADE_FROM, MODELS, STAGES, section_of
from lmpipe.model import params as model_params
from lmpipe.model.build import ARCHITECTURES


def test_the_table_names_every_arch_the_model_section_and_the_builder_know():
    assert tuple(ARCHS) == model_params.ARCHS
    assert typing.get_args(model_params.ModelParams.model_fields["arch"].annotation) == tuple(ARCHS)
    assert set(ARCHITECTURES) == set(ARCHS)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_arch_is_saved_as_the_model_type_of_its_row(arch):
    model_class, _ = ARCHITECTURES[arch]
    assert model_class.config_class.model_type == model_type(arch)
    assert arch_of(model_type(arch)) == arch


def test_recurrent_archs_and_lookups():
    assert RECURRENT_TYPES == {"mamba", "mamba2", "recurrent_gemma"}
    assert [a for a in ARCHS if is_recurrent(a)] == ["mamba", "mamba2", "hawk"]
    assert arch_of("qwen2") == arch_of(None) == "llama"  # an imported model continues as llama


def test_every_pipeline_model_has_a_stage_and_a_section():
    names = set(MODELS) | set(EXTRA)
    assert set(STAGES) == names and set(MADE_FROM) < names
    assert {name: section_of(name) for name in names} == {
        "teacher": "teacher", "student": "student", "distilled": "student",
        "quantized": "student", "quantized_ptq": "student", "int8": "student"}
