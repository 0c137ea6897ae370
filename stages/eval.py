"""DVC stage `eval`: teacher, scratch student, distilled and quantized student (and the quantize
stage's PTQ and int8 comparison models), side by side, each with its model card
(lmpipe/runs/evaluation.py)."""

from lmpipe.core.paths import PARAMS
from lmpipe.core.pipeline_models import MODELS, section_of
from lmpipe.params.arch_support import refuse_unsupported
from lmpipe.stage import stage


@stage
def eval(params, argv):
    """`python -m stages.eval [MODEL ...]`: the named models only (a sweep's one-model pipeline),
    else all four and the quantize stage's comparison models."""
    unknown = [name for name in argv if name not in MODELS]
    if unknown:
        raise SystemExit(f"usage: python -m stages.eval [{'|'.join(MODELS)} ...]; got {unknown}")
    refuse_unsupported(params, "eval", str(PARAMS),
                       evaluated={section_of(name) for name in argv or MODELS})
    # torch: only once the params are valid
    from lmpipe.runs.evaluation import evaluate_pipeline

    table = evaluate_pipeline(params, argv)
    for name, figures in table.items():
        print(f"eval {name:>10}: " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()))


if __name__ == "__main__":
    eval()
