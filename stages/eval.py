"""DVC stage `eval`: teacher, scratch student, distilled and quantized student (and the quantize
stage's PTQ and int8 comparison models), side by side.

After scoring, it writes every model's complete model card, with the four-model comparison table
and model-index results from it, to `runs/eval/cards/<model>/README.md`. The cards live in this
stage's own output on purpose: rewriting `runs/<stage>/model/README.md` would change another
stage's DVC output, so DVC would report that stage as modified and rerun it. The cards the training
stages write into their model directories carry only their own run's figures.
"""

import json
from pathlib import Path

from lmpipe.core.paths import METRICS, PARAMS, TOKENS, WORLD, model_dir, run_dir
from lmpipe.core.run_folder import SUMMARY_FILE
from lmpipe.params.arch_support import refuse_unsupported
from lmpipe.params.config import Params
from lmpipe.stage import stage

MODELS = {"teacher": "teacher", "student": "student", "distilled": "distill", "quantized": "quantize"}
# the quantize stage's comparison models, evaluated when it wrote them
EXTRA = {"quantized_ptq": "quantize/ptq", "int8": "quantize/int8"}
STAGES = {"teacher": "train", "student": "train", "distilled": "distill", "quantized": "quantize",
          "quantized_ptq": "quantize", "int8": "quantize"}
# The model each one is made from (its card's base_model); teacher and student are trained from
# scratch unless their section imports a `pretrained` model.
MADE_FROM = {"distilled": "teacher", "quantized": "distilled", "quantized_ptq": "distilled",
             "int8": "distilled"}


def write_cards(models: dict[str, Path], table: dict[str, dict[str, float]], params: Params,
                out: Path) -> dict[str, Path]:
    """`out/<model>/README.md` for every evaluated model, each with the whole comparison table."""
    from lmpipe.model.card import write_model_card

    resolved = params.model_dump(mode="json")
    cards = {}
    for name, folder in models.items():
        summary_path = Path(folder).parent / SUMMARY_FILE  # the run folder of that model
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        source = MADE_FROM.get(name)
        base = (str(models[source]) if source in models
                else (resolved.get(name) or {}).get("pretrained"))
        cards[name] = write_model_card(folder, name=name, stage=STAGES.get(name, "train"),
                                       params=resolved, summary=summary, base_model=base,
                                       comparison=table, out=out / name / "README.md")
    return cards


@stage
def eval(params, argv):
    """`python -m stages.eval [MODEL ...]`: the named models only (a sweep's one-model pipeline),
    else all four and the quantize stage's comparison models."""
    unknown = [name for name in argv if name not in MODELS]
    if unknown:
        raise SystemExit(f"usage: python -m stages.eval [{'|'.join(MODELS)} ...]; got {unknown}")
    models = {name: model_dir(MODELS[name]) for name in argv or MODELS}
    # the distilled and quantized models have the student's architecture
    refuse_unsupported(params, "eval", str(PARAMS),
                       evaluated={"teacher" if name == "teacher" else "student" for name in models})
    if not argv:
        models |= {name: run_dir(path) for name, path in EXTRA.items()
                   if (run_dir(path) / "config.json").is_file()}
    from lmpipe.core.outputs import staged, write_atomic
    from lmpipe.runs.evaluation import evaluate_run  # torch: only once the params are valid

    # the run folder and the metrics file are replaced together, only once every model is scored
    with staged(run_dir("eval")) as out:
        table = evaluate_run(models, WORLD / "people.duckdb", TOKENS, params, out)
        write_cards(models, table, params, out / "cards")
        staged_tasks = (out / "harness_tasks").resolve()
    if (run_dir("eval") / "harness_tasks").is_dir():
        from lmpipe.eval.harness import relocate_people_tasks

        relocate_people_tasks(run_dir("eval") / "harness_tasks", staged_tasks)
    write_atomic(METRICS / "eval.json", json.dumps(table, indent=2) + "\n")
    for name, figures in table.items():
        print(f"eval {name:>10}: " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()))


if __name__ == "__main__":
    eval()
