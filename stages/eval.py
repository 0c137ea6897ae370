"""DVC stage `eval`: teacher, scratch student, distilled and quantized student, side by side."""

from lmpipe.entry import stage
from lmpipe.evaluate import evaluate_run
from lmpipe.paths import METRICS, TOKENS, WORLD, model_dir, run_dir

MODELS = {"teacher": "teacher", "student": "student", "distilled": "distill", "quantized": "quantize"}


@stage
def eval(params, argv):
    models = {name: model_dir(run) for name, run in MODELS.items()}
    table = evaluate_run(models, WORLD / "people.duckdb", TOKENS, params, run_dir("eval"),
                         METRICS / "eval.json")
    for name, figures in table.items():
        print(f"eval {name:>10}: " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()))


if __name__ == "__main__":
    eval()
