"""Local lm-eval task files: a JSONL data file and the YAML config that points lm-eval at it.

lmpipe's generated tasks (the people tasks, the validation-text tasks) are written this way, so
`lm_eval --include_path FOLDER --tasks NAME` runs them outside lmpipe too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def task_config(name: str, data_file: Path, **fields: Any) -> dict[str, Any]:
    """An lm-eval task config reading `data_file` (JSONL) as its test split; `fields` add to or
    override the defaults (the prompt is the row's `prompt`, no delimiter before the answer)."""
    return {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
            "test_split": "test", "doc_to_text": "prompt",
            # the answer follows the prompt directly (e.g. right after the ASSISTANT token)
            "target_delimiter": "", "metadata": {"version": 1.0}, **fields}


def write_task(out_dir: str | Path, name: str, rows: list[dict[str, Any]],
               **fields: Any) -> str:
    """Write `rows` to `out_dir/name.jsonl` and its config (`task_config(..., **fields)`) to
    `out_dir/name.yaml`; return `name`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    config = task_config(name, data, **fields)
    (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return name
