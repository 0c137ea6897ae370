"""DVC stage `quantize`: the distilled student as a ternary BitNet b1.58 model (QAT or PTQ),
packed 2 bits per weight, beside an int8 weight-only baseline (compact int8 file + a dequantized
float twin for transformers). The whole folder is built in staging and replaces `runs/quantize`
only when every export is written."""

from lmpipe.core.paths import PARAMS, TEACHER_CACHE, TOKENIZER, TOKENS, model_dir, run_dir
from lmpipe.params.arch_support import refuse_unsupported
from lmpipe.stage import stage


@stage
def quantize(params, argv):
    refuse_unsupported(params, "quantize", str(PARAMS))
    from lmpipe.core.outputs import staged
    from lmpipe.runs.quantize import quantize_run  # torch: only once the params are valid

    with staged(run_dir("quantize")) as out:
        quantize_run(params, model_dir("distill"), out, TOKENS, TOKENIZER, TEACHER_CACHE,
                     model_dir("teacher"))


if __name__ == "__main__":
    quantize()
