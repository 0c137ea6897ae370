"""DVC stage `quantize`: the distilled student as a ternary BitNet b1.58 model (QAT or PTQ),
packed 2 bits per weight, beside an int8 weight-only baseline."""

from lmpipe.entry import stage
from lmpipe.paths import TEACHER_CACHE, TOKENIZER, TOKENS, model_dir, run_dir
from lmpipe.quantize import quantize_run


@stage
def quantize(params, argv):
    quantize_run(params, model_dir("distill"), run_dir("quantize"), TOKENS, TOKENIZER,
                 TEACHER_CACHE, model_dir("teacher"))


if __name__ == "__main__":
    quantize()
