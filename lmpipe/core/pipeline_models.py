"""The pipeline's models by name, as the eval stage scores them and the reports label them: the
stage folder each is saved in, the stage that makes it, the model it is made from, and the params
section whose `model` (architecture) it has.

    teacher, student          trained from scratch (`train@teacher`, `train@student`) unless
                              their section imports a `pretrained` model
    distilled                 the student architecture distilled from the teacher (`distill`)
    quantized                 the distilled model quantized to ternary (`quantize`)
    quantized_ptq, int8       the quantize stage's comparison models, when it wrote them

Nothing here imports torch: the eval stage checks its arguments and refuses what the models'
architectures cannot do before it loads any model.
"""

from __future__ import annotations

# model -> the stage folder (runs/<folder>/model) it is saved in
MODELS = {"teacher": "teacher", "student": "student", "distilled": "distill",
          "quantized": "quantize"}
# the quantize stage's comparison models (runs/<folder>), evaluated when it wrote them
EXTRA = {"quantized_ptq": "quantize/ptq", "int8": "quantize/int8"}
# model -> the stage that makes it
STAGES = {"teacher": "train", "student": "train", "distilled": "distill", "quantized": "quantize",
          "quantized_ptq": "quantize", "int8": "quantize"}
# The model each one is made from (its card's base_model); teacher and student are trained from
# scratch unless their section imports a `pretrained` model.
MADE_FROM = {"distilled": "teacher", "quantized": "distilled", "quantized_ptq": "distilled",
             "int8": "distilled"}


def section_of(model: str) -> str:
    """The params section whose `model.arch` the model named `model` has: the teacher its own
    (`teacher`), every other one (the student and what is distilled or quantized from it) the
    student's (`student`)."""
    return "teacher" if model == "teacher" else "student"
