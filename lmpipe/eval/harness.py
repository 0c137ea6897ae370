"""Evaluation with EleutherAI's lm-evaluation-harness: lmpipe's people world as lm-eval tasks.

`write_people_tasks` turns questions about people of the world into two local lm-eval tasks:
`people_recall` (greedy generation up to END, exact match: the same prompt and scoring as
lmpipe's own recall metric) and `people_recall_mc` (log-likelihood multiple choice over the
attribute's values). The validation-text tasks are lmpipe/eval/text_tasks.py's, the names
`eval.harness_tasks` expands lmpipe/eval/task_names.py's. `run_harness` runs any lm-eval tasks,
these, lmpipe's own task files (lmpipe/eval/tasks/) or lm-eval's (hellaswag, mmlu, ... when their
data is in the local Hugging Face cache), on a saved lmpipe model and returns lmpipe eval records.
lm-eval is optional: it is imported only here, inside the functions.

Every architecture runs (llama, mamba, hawk; tests/eval/test_harness_archs.py checks lm-eval's
log-likelihoods and greedy answers against direct forwards and lmpipe's own generation), through
lm-eval's `hf` model with two changes for the recurrent ones (`lm_class`):
  - hawk (recurrent_gemma) generates without a cache (transformers' RecurrentGemma fails in any
    cached forward when no block is attention: lmpipe/model/hawk.py), which lm-eval asks for
    unconditionally, and unpadded, its prompts grouped by length: its convolution does not mask
    the left padding lm-eval's batches carry, so a pad would enter the prompt's state. Mamba
    masks padded positions itself (lmpipe/model/mamba.py) and generates as llama does. Scoring
    (log-likelihood) batches are right-padded, which a causal model never sees.
  - a model without a position limit in its config (no `max_position_embeddings`: the recurrent
    ones) gets `max_length` `UNBOUNDED_LENGTH` rather than the tokenizer's placeholder, so that
    no prompt is cut and a rolling perplexity window is a whole document, as in lmpipe's own
    validation loss.
"""

from __future__ import annotations

import contextlib
import functools
import json
import numbers
import random
import tempfile
from pathlib import Path
from typing import Any

from lmpipe.core import protocol
from lmpipe.core.section import ConfigError
from lmpipe.data.tooldb import PeopleDB
from lmpipe.eval.params import EvalParams
from lmpipe.eval.task_files import write_task
from lmpipe.eval.task_names import (
    LMPIPE_TASKS,
    LMPIPE_TASKS_DIR,
    MC_TASK,
    PEOPLE_TASKS,
    RECALL_TASK,
    VAL_NEXT_LINE_TASK,
    VAL_TASKS,
    VAL_TEXT_TASK,
    expand,
)
from lmpipe.eval.text_tasks import MAX_ITEMS, write_next_line_task, write_text_task

MAX_CHOICES = 16
INSTALL_HINT = "pip install 'lmpipe[harness]'"
# lm-eval's `max_length` for a model whose config sets no position limit (a recurrent model)
UNBOUNDED_LENGTH = 1 << 20
# the config attributes lm-eval reads a context length from (lm_eval.models.utils)
LENGTH_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")
# model types that generate uncached and unpadded in lm-eval (module docstring)
UNPADDED_GENERATION = frozenset({"recurrent_gemma"})


def _choices(answer: str, values: list[str], key: str) -> list[str]:
    """All of the attribute's values, or when there are more than MAX_CHOICES, the answer and
    MAX_CHOICES - 1 distractors drawn with a seed made from the question (so reruns and models
    see the same options); sorted, so the answer's position carries no signal."""
    if len(values) <= MAX_CHOICES:
        return values
    distractors = random.Random(key).sample([v for v in values if v != answer], MAX_CHOICES - 1)
    return sorted([answer, *distractors])


def relocate_people_tasks(task_dir: str | Path, old_dir: str | Path) -> None:
    """Point the task YAMLs in `task_dir` at their data files there, after the folder was moved
    from `old_dir` (the eval stage writes in staging, then publishes: lm-eval wants absolute
    data paths)."""
    old, new = str(Path(old_dir).resolve()), str(Path(task_dir).resolve())
    for config in Path(task_dir).glob("*.yaml"):
        config.write_text(config.read_text().replace(old, new))


def write_people_tasks(db_path: str | Path | PeopleDB, people: list[dict[str, str]],
                       out_dir: str | Path, max_gen_toks: int = 48) -> list[str]:
    """Write lm-eval tasks asking every attribute of `people` into `out_dir`; return their names.

    `db_path`: the world's `people.duckdb` (or an open PeopleDB); multiple-choice options come from
    every person in it. `max_gen_toks`: the recall answer's token budget, as lmpipe's
    `eval.max_new_tokens` (lm-eval's default of 256 leaves no room for the prompt in a model with a
    256-token context). Each task is a JSONL data file plus a YAML config, so
    `lm_eval --include_path out_dir --tasks people_recall` runs it outside lmpipe too.
    """
    if not people:
        raise ConfigError("write_people_tasks: no people to ask about")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(db_path) if isinstance(db_path, PeopleDB)
          else PeopleDB(db_path)) as db:
        everyone = db.people("train") + db.people("heldout")
    values = {a: sorted({p[a] for p in everyone}) for a in protocol.ATTRIBUTES}
    recall, mc = [], []
    for person in people:
        for attribute in protocol.ATTRIBUTES:
            name, answer = person["name"], person[attribute]
            prompt = protocol.prompt(attribute, name, with_tool=False)
            recall.append({"prompt": prompt, "target": answer, "attribute": attribute})
            options = _choices(answer, values[attribute], f"{name}/{attribute}")
            # a choice is the whole assistant turn, END included, so a value that is a prefix of
            # another ("Rome" / "Romeo") is not favoured for stopping early
            mc.append({"prompt": prompt, "choices": [o + protocol.END for o in options],
                       "label": options.index(answer), "attribute": attribute})
    write_task(out, RECALL_TASK, recall, output_type="generate_until", doc_to_target="target",
               generation_kwargs={"until": [protocol.END], "do_sample": False,
                                  "temperature": 0.0, "max_gen_toks": max_gen_toks},
               # lmpipe scores `answer.strip() == expected`: the same here
               filter_list=[{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                         {"function": "take_first"}]}],
               metric_list=[{"metric": "exact_match", "aggregation": "mean",
                             "higher_is_better": True}])
    write_task(out, MC_TASK, mc, output_type="multiple_choice", doc_to_choice="choices",
               doc_to_target="label",
               metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    return list(PEOPLE_TASKS)


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError(f"lm-eval is not installed ({exc}); {INSTALL_HINT}") from None
    return lm_eval, TaskManager


def hf_model_args(model_dir: str | Path, add_bos_token: bool = True) -> dict[str, Any]:
    """lm-eval's `hf` model arguments for a saved lmpipe model.

    add_bos_token: lmpipe's tokenizer prepends the BOS every document is trained after, as
    lmpipe's evaluator encodes its prompts; True keeps it for generation and multiple-choice
    tasks. Rolling log-likelihood (perplexity) tasks need False: lm-eval puts its own BOS prefix
    before each rolling window, so a tokenizer BOS would be scored as a second one (predicted
    from the first) and the perplexity would not be lmpipe's validation loss. A config without a
    position limit (a recurrent model) gets `max_length` UNBOUNDED_LENGTH (module docstring).
    """
    args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": "float32",
                            "add_bos_token": add_bos_token}
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    if not any(config.get(key) for key in LENGTH_KEYS):
        args["max_length"] = UNBOUNDED_LENGTH
    return args


@functools.cache
def lm_class() -> type:
    """lm-eval's HFLM, generating as each architecture can (module docstring); llama and mamba
    run lm-eval's own code unchanged."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils_hf import stop_sequences_criteria

    class LmpipeHFLM(HFLM):
        def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                            **generation_kwargs: Any) -> torch.Tensor:
            if self.model.config.model_type not in UNPADDED_GENERATION:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            mask = generation_kwargs.pop("attention_mask")
            # greedy unless asked otherwise, as lm-eval's own _model_generate decides
            kwargs = generation_kwargs
            kwargs.setdefault("temperature", 0.0)
            if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
                kwargs["do_sample"] = False
            if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
                kwargs.pop("temperature")
            width, new_tokens = context.shape[1], max_length - context.shape[1]
            # lm-eval reads each row's continuation from column `width` on: a row keeps its
            # left padding, and is right-padded after its generated tokens
            out = torch.full((context.shape[0], max_length), self.tokenizer.pad_token_id,
                             dtype=context.dtype, device=context.device)
            lengths = mask.sum(dim=1)
            for length in lengths.unique().tolist():
                rows = (lengths == length).nonzero().squeeze(1)
                prompts = context[rows, width - length:]
                with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                    enabled=self.mixed_precision_dtype is not None):
                    generated = self.model.generate(
                        input_ids=prompts, attention_mask=torch.ones_like(prompts),
                        max_length=length + new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                        stopping_criteria=stop_sequences_criteria(self.tokenizer, stop, length,
                                                                  len(rows)),
                        use_cache=False, **kwargs)
                out[rows, width - length:width - length + generated.shape[1]] = generated
            return out

    return LmpipeHFLM


def _rolling(manager, task: str) -> bool:
    """Whether every task under `task` (a task, group or tag) scores rolling log-likelihood."""
    leaves = list(manager.load(task)["tasks"].values())
    return bool(leaves) and all(t.OUTPUT_TYPE == "loglikelihood_rolling" for t in leaves)


def _task_manager(tasks: list[str], include_paths: list[Path]):
    """A TaskManager that knows every name in `tasks`, or a ConfigError naming those it does not.

    lm-eval's own task index takes seconds to build, so it is left out when `include_paths` hold
    every task."""
    _, TaskManager = _lm_eval()
    folders = [str(p) for p in include_paths]
    if folders:
        local = TaskManager(include_path=folders, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=folders or None, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" nor in {', '.join(folders)}" if folders else ""
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(map(repr, unknown))}: not among "
                          f"lm-eval's tasks{where}")
    return manager


def _records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's results as lmpipe eval records: one per task (or group) and metric."""
    counts = {t: n.get("effective") for t, n in results.get("n-samples", {}).items()}
    groups = {g: m for g, m in results.get("group_subtasks", {}).items() if m and g not in counts}
    # a group of groups (mmlu -> mmlu_stem -> mmlu_anatomy) is counted once its members are
    while any(all(m in counts for m in members) for members in groups.values()):
        for group, members in list(groups.items()):
            if all(m in counts for m in members):
                counts[group] = sum(counts[m] for m in members)
                del groups[group]
    records = []
    for task, scores in results["results"].items():
        keys = [k for k in scores if "," in k and "_stderr," not in k]
        metric_names = [k.split(",", 1)[0] for k in keys]
        for key, metric in zip(keys, metric_names):
            value = scores[key]
            if not isinstance(value, numbers.Real):
                continue  # "N/A" for groups without an aggregate
            # lm-eval keys a metric by its filter ("exact_match,strip"); the filter name only
            # matters when one task reports the same metric under several filters
            suffix = key.split(",", 1)[1]
            name = metric if metric_names.count(metric) == 1 else f"{metric}_{suffix}"
            records.append({"metric": f"lmeval_{name}", "split": task, "attribute": None,
                            "value": float(value), "n": counts.get(task)})
    return records


def run_harness(model_dir: str | Path, tasks: list[str],
                include_path: str | Path | list[str | Path] | None = None,
                limit: int | None = None, batch_size: int = 32) -> list[dict[str, Any]]:
    """Run lm-eval `tasks` on the saved model in `model_dir` (CPU, fp32); return eval records
    `{metric: "lmeval_<metric>", split: task, attribute: None, value, n}`.

    `include_path`: a folder of task YAMLs (e.g. from `write_people_tasks`), or a list of them;
    lmpipe's own task files (LMPIPE_TASKS_DIR) are always included. `limit`: at most this
    many samples per task. A task name lm-eval does not know raises ConfigError naming it.
    Perplexity (rolling log-likelihood) tasks run without the tokenizer's BOS, the others with it
    (`hf_model_args`).
    """
    if not tasks:
        raise ConfigError("run_harness: no tasks given")
    if limit is not None and limit < 1:
        raise ConfigError(f"run_harness: limit must be >= 1, got {limit}")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json)")
    given = [] if include_path is None else (
        list(include_path) if isinstance(include_path, (list, tuple)) else [include_path])
    for folder in given:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: task folder (include_path) not found")
    # lmpipe's task files only when asked for: lm-eval imports every folder's utils.py
    own = [LMPIPE_TASKS_DIR] if any(t in LMPIPE_TASKS for t in tasks) else []
    lm_eval, _ = _lm_eval()
    manager = _task_manager(list(tasks), [Path(f) for f in given] + own)
    rolling = [t for t in tasks if _rolling(manager, t)]
    records = []
    # perplexity tasks without the tokenizer's BOS (hf_model_args), the others with it
    for names, bos in (([t for t in tasks if t not in rolling], True), (rolling, False)):
        if names:
            lm = lm_class().create_from_arg_obj(hf_model_args(model_dir, add_bos_token=bos),
                                                {"batch_size": batch_size, "device": "cpu"})
            records += _records(lm_eval.simple_evaluate(
                model=lm, tasks=names, task_manager=manager, limit=limit,
                # stderr is not reported; 0 skips the bootstrap
                bootstrap_iters=0, log_samples=False))
    return records


def harness_records(model_dir: str | Path, params: EvalParams, db: PeopleDB | None,
                    people: list[dict[str, str]], task_dir: str | Path | None = None,
                    texts: list[str] | None = None) -> list[dict[str, Any]]:
    """The eval stage's hook: run `params.harness_tasks` on one model.

    Aliases expand first (lmpipe/eval/task_names.py). "people" (or either people task by name)
    writes the people tasks for `people` into `task_dir` (a temporary folder when None);
    `val_text` and `val_next_line` write tasks over `texts`, the validation documents; other
    names go to lm-eval as they are."""
    requested = expand(params.harness_tasks)
    wants_people = any(t in PEOPLE_TASKS for t in requested)
    if wants_people and (db is None or not people):
        raise ConfigError("eval.harness_tasks: the people tasks need the people world "
                          "(data.source = people) and trained people to ask about")
    wants_text = [t for t in requested if t in VAL_TASKS]
    if wants_text and not texts:
        raise ConfigError(f"eval.harness_tasks: {wants_text} need validation documents")
    with (tempfile.TemporaryDirectory() if task_dir is None
          else contextlib.nullcontext(task_dir)) as folder:
        if wants_people:
            write_people_tasks(db, people, folder, max_gen_toks=params.max_new_tokens)
        if VAL_TEXT_TASK in wants_text:
            write_text_task(texts, folder)
        if VAL_NEXT_LINE_TASK in wants_text:
            # a seeded sample of the whole text, not lm-eval's first `limit` questions
            write_next_line_task(texts, folder, seed=params.seed,
                                 max_items=min(MAX_ITEMS, params.harness_limit or MAX_ITEMS))
        local = wants_people or wants_text
        return run_harness(model_dir, requested, include_path=folder if local else None,
                           limit=params.harness_limit, batch_size=params.batch_size)
