"""The names `eval.harness_tasks` accepts besides lm-eval's own tasks, and what each expands to.

Imports nothing heavy, so params validation can use it without loading lm-eval (seconds).

- `people`: lmpipe's people tasks (people_recall, people_recall_mc; lmpipe/eval/harness.py),
  written for the sampled trained people of the people world.
- `val_text`, `val_next_line`: local tasks over the validation documents of any corpus
  (lmpipe/eval/text_tasks.py): perplexity and bits per byte as lm-eval computes them, and a
  four-way choice of a line's true continuation.
- `distily`: a preset of the benchmarks the distily project reported (MMLU, MATH, GLUE CoLA and
  MNLI, SQuAD, TriviaQA, HotpotQA, CoNLL-2003). lm-eval's own tasks where it has one; HotpotQA
  and CoNLL-2003, which lm-eval lacks, are lmpipe's task files in lmpipe/eval/tasks/. They read
  the Hugging Face datasets in `PRESET_DATASETS`, which must be in the local datasets cache when
  lmpipe runs offline (its default): lmpipe never downloads at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

RECALL_TASK = "people_recall"
MC_TASK = "people_recall_mc"
PEOPLE_TASKS = (RECALL_TASK, MC_TASK)
PEOPLE_ALIAS = "people"

VAL_TEXT_TASK = "val_text"
VAL_NEXT_LINE_TASK = "val_next_line"
VAL_TASKS = (VAL_TEXT_TASK, VAL_NEXT_LINE_TASK)

# lmpipe's own task files, for benchmarks lm-eval has no task for
LMPIPE_TASKS_DIR = Path(__file__).parent / "tasks"
HOTPOTQA_TASK = "lmpipe_hotpotqa"
CONLL_TASK = "lmpipe_conll2003"
LMPIPE_TASKS = (HOTPOTQA_TASK, CONLL_TASK)

# preset name -> the lm-eval task (or group) names it runs
PRESETS: dict[str, tuple[str, ...]] = {
    "distily": ("mmlu", "hendrycks_math", "cola", "mnli", "squad_completion", "triviaqa",
                HOTPOTQA_TASK, CONLL_TASK),
}

# the Hugging Face dataset (repo, config names) each preset task reads, as in its task file
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions")
MATH_TOPICS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
               "number_theory", "prealgebra", "precalculus")
PRESET_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mmlu": ("cais/mmlu", MMLU_SUBJECTS),
    "hendrycks_math": ("EleutherAI/hendrycks_math", MATH_TOPICS),
    "cola": ("nyu-mll/glue", ("cola",)),
    "mnli": ("nyu-mll/glue", ("mnli",)),
    "squad_completion": ("hazyresearch/based-squad", ("default",)),
    "triviaqa": ("mandarjoshi/trivia_qa", ("rc.nocontext",)),
    HOTPOTQA_TASK: ("hotpotqa/hotpot_qa", ("distractor",)),
    CONLL_TASK: ("eriktks/conll2003", ("conll2003",)),
}


def expand(names: list[str]) -> list[str]:
    """`eval.harness_tasks` with its aliases (people, presets) expanded, in order, without
    repeats."""
    out: list[str] = []
    for name in names:
        if name == PEOPLE_ALIAS:
            out += PEOPLE_TASKS
        else:
            out += PRESETS.get(name, (name,))
    return list(dict.fromkeys(out))


def is_lmpipe_task(name: str) -> bool:
    """Whether `name` (expanded) is one of lmpipe's own tasks rather than lm-eval's."""
    return name in PEOPLE_TASKS or name in VAL_TASKS or name in LMPIPE_TASKS


def datasets_cache_dir() -> Path:
    """Where `datasets` keeps prepared datasets ($HF_DATASETS_CACHE, else $HF_HOME/datasets),
    found without importing it."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "datasets"


def cached_config(repo: str, config: str, cache: Path) -> bool:
    """Whether `datasets` can load `repo`'s `config` offline from `cache`: the folder
    `<namespace>___<name>/<config>/<version>/<hash>` it prepares on a first, online load."""
    from re import sub

    namespace, _, name = repo.rpartition("/")
    # datasets.naming.camelcase_to_snakecase, which names the cache folder
    name = sub(r"([a-z\d])([A-Z])", r"\1_\2", sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)).lower()
    folder = cache / "___".join(p for p in (namespace, name) if p) / config
    return any(len(p.relative_to(folder).parts) == 2 for p in folder.glob("*/*") if p.is_dir())


def missing_datasets(tasks: list[str], cache: Path | None = None) -> list[str]:
    """The preset tasks among `tasks` (expanded) whose datasets are not all in the local cache,
    each as 'task (repo config, ...)'."""
    cache = datasets_cache_dir() if cache is None else cache
    out = []
    for task in tasks:
        if task in PRESET_DATASETS:
            repo, configs = PRESET_DATASETS[task]
            absent = [c for c in configs if not cached_config(repo, c, cache)]
            if absent:
                shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more"
                                                 if len(absent) > 3 else "")
                out.append(f"{task} ({repo} {shown})")
    return out
