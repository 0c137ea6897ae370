"""DVC stage `quantize`: ternary post-training quantization of the distilled student."""

from lmpipe.entry import stage
from lmpipe.paths import model_dir, run_dir
from lmpipe.quantize import quantize_run


@stage
def quantize(params, argv):
    quantize_run(model_dir("distill"), run_dir("quantize"), params)


if __name__ == "__main__":
    quantize()
