"""The index page's opening summary: the experiment's key comparisons, in numbers, in a few lines.

From the eval run the distillation page shows (the latest with the pipeline's models, over its
replicates when it has seeds): what the teacher answers with and without the tool, what
distillation gains over the same student trained from scratch, and what each quantization costs
in loss and saves in bytes. From each sweep whose eval runs evaluate one kind of model (the
in-tool-learning and knowledge-capacity recipes): accuracy with the tool against recall without
it, over the models trained for each. Figures over replicates read "mean (min–max)".
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lmpipe.report import distillation, scaling_data
from lmpipe.report.page import esc, fmt_spread
from lmpipe.report.source import Source

QUANTIZED = {"quantized": "Ternary QAT", "quantized_ptq": "Ternary post-training quantization",
             "int8": "Int8 weight-only quantization"}


def three(value: Any) -> str:
    return f"{value:.3f}"


class Figures:
    """(model, metric, split) -> mean, lowest, highest, replicates of one eval run's group."""

    def __init__(self, overall: pd.DataFrame) -> None:
        self.rows: dict[tuple[str, str, str], tuple[float, float, float, int]] = {}
        for row in overall.itertuples(index=False):
            n = int(getattr(row, "value_n", 1) or 1)
            low = getattr(row, "value_min", row.value)
            high = getattr(row, "value_max", row.value)
            self.rows[(row.model, row.metric, row.split)] = (row.value, low, high, n)

    def has(self, model: str, metric: str, split: str) -> bool:
        return (model, metric, split) in self.rows

    def mean(self, model: str, metric: str, split: str) -> float:
        return self.rows[(model, metric, split)][0]

    def text(self, model: str, metric: str, split: str) -> str:
        """The figure as 'mean (min–max)' over replicates, to 3 decimals; '–' when missing."""
        if not self.has(model, metric, split):
            return "–"
        return fmt_spread(*self.rows[(model, metric, split)], three)


def tool_comparison(f: Figures, model: str, baseline: str) -> str:
    """'tool accuracy A against B on held-out people (trained people: a against b)': held-out
    first, since answering about people never trained on is what only the tool makes possible."""
    trained = (f"{f.text(model, 'tool_accuracy', 'trained')} against "
               f"{f.text(baseline, 'tool_accuracy', 'trained')}")
    if not all(f.has(m, "tool_accuracy", "heldout") for m in (model, baseline)):
        return f"tool accuracy {trained} on trained people"
    return (f"tool accuracy {f.text(model, 'tool_accuracy', 'heldout')} against "
            f"{f.text(baseline, 'tool_accuracy', 'heldout')} on held-out people (trained people: "
            f"{trained})")


def kept_tool_accuracy(f: Figures, model: str) -> str:
    """'; tool accuracy A on held-out people (N% of the distilled model's), a on trained people'
    for a quantized `model`: the share is what quantization keeps of its float twin."""
    parts = []
    if f.has(model, "tool_accuracy", "heldout"):
        part = f"{f.text(model, 'tool_accuracy', 'heldout')} on held-out people"
        twin = (f.mean("distilled", "tool_accuracy", "heldout")
                if f.has("distilled", "tool_accuracy", "heldout") else 0.0)
        if twin > 0:
            kept = f.mean(model, "tool_accuracy", "heldout") / twin
            part += f" ({kept:.1%} of the distilled model's)"
        parts.append(part)
    if f.has(model, "tool_accuracy", "trained"):
        parts.append(f"{f.text(model, 'tool_accuracy', 'trained')} on trained people")
    return f"; tool accuracy {', '.join(parts)}" if parts else ""


def pipeline_lines(src: Source) -> tuple[str, list[str]]:
    """Where the figures come from, and the teacher, distillation and quantization sentences of
    the pipeline's latest eval run."""
    models = ", ".join(f"'{m}'" for m in distillation.MODEL_ORDER)
    latest = src.scalar(distillation.LATEST_EVAL_RUN_SQL.format(
        models=models, stage_rows=src.stage_rows(), not_in_sweep=src.not_in_sweep()))
    if latest is None:
        return "", []
    overall, members = distillation.overall_spread(src, latest)
    if overall.empty:
        return "", []
    f = Figures(overall)
    lines = []
    if len(members) > 1:
        group = src.scalar(f"SELECT group_id FROM ({src.run_groups_sql()}) WHERE run_id = ?",
                           [latest])
        source = (f"the mean (lowest–highest) over the {len(members)} replicates of eval run "
                  f"<code>{esc(group)}</code>")
    else:
        source = f"eval run <code>{esc(latest)}</code>"
    if f.has("teacher", "tool_accuracy", "trained"):
        size = (f" ({f.mean('teacher', 'parameters', 'model'):,.0f} parameters)"
                if f.has("teacher", "parameters", "model") else "")
        text = (f"<b>Teacher</b>{size}: tool accuracy "
                f"{f.text('teacher', 'tool_accuracy', 'trained')} on trained people")
        if f.has("teacher", "tool_accuracy", "heldout"):
            text += f" and {f.text('teacher', 'tool_accuracy', 'heldout')} on held-out people"
        if f.has("teacher", "recall", "trained"):
            text += f"; recall without the tool {f.text('teacher', 'recall', 'trained')}"
        lines.append(text + ".")
    if f.has("distilled", "val_loss", "val") and f.has("student", "val_loss", "val"):
        gain = f.mean("distilled", "val_loss", "val") - f.mean("student", "val_loss", "val")
        size = (f"{f.mean('student', 'parameters', 'model'):,.0f}-parameter "
                if f.has("student", "parameters", "model") else "")
        lines.append(
            f"<b>Distillation</b>: validation loss {f.text('distilled', 'val_loss', 'val')} "
            f"nats/token for the distilled student against {f.text('student', 'val_loss', 'val')} "
            f"for the same {size}model trained from scratch ({gain:+.3f}); "
            f"{tool_comparison(f, 'distilled', 'student')}.")
    apart = distillation.destroyed(overall)
    for model, name in QUANTIZED.items():
        if not f.has(model, "val_loss", "val") or not f.has("distilled", "val_loss", "val"):
            continue
        delta = f.mean(model, "val_loss", "val") - f.mean("distilled", "val_loss", "val")
        text = (f"<b>{name}</b> ({esc(model)}): validation loss {f.text(model, 'val_loss', 'val')} "
                f"({delta:+.3f} against the distilled model)")
        if f.has(model, "weight_bytes", "model") and f.has("distilled", "weight_bytes", "model"):
            share = (f.mean(model, "weight_bytes", "model")
                     / f.mean("distilled", "weight_bytes", "model"))
            text += (f", weights in {f.mean(model, 'weight_bytes', 'model'):,.0f} bytes "
                     f"({share:.1%} of the distilled model's)")
        text += kept_tool_accuracy(f, model)
        if model in apart:
            text += " — <b>destroyed</b> by quantization"
        lines.append(text + ".")
    return ((f"The pipeline's models, from {source} (every figure is on the "
            '<a href="distillation.html">distillation page</a>):'), lines)


def sweep_lines(src: Source) -> list[str]:
    """Per sweep of one kind of model: tool accuracy with the tool against recall without it."""
    models = scaling_data.load(src)
    if models.empty:
        return []
    models = models[models["sweep"].notna()]
    lines = []
    for sweep, rows in models.groupby("sweep", sort=True):
        if rows["model"].nunique() != 1:  # a sweep of the whole pipeline: the distillation page
            continue
        parts = []
        for column, world, what in (("tool_accuracy", "tool_world", "with the tool, tool accuracy"),
                                    ("recall", "qa_world", "without it, recall")):
            values = rows.loc[rows[world] & rows[column].notna(), column]
            if len(values):
                figure = fmt_spread(values.mean(), values.min(), values.max(), len(values), three)
                parts.append(f"{what} {figure} over the {len(values)} models trained for it")
        if parts:
            sizes = rows["parameters"].dropna()
            span = (f" ({sizes.min():,.0f}–{sizes.max():,.0f} parameters)"
                    if sizes.nunique() > 1 else "")
            lines.append(f"<b>Sweep <code>{esc(sweep)}</code></b>{span}: " + "; ".join(parts)
                         + " — mean (lowest–highest) over every size and world; the "
                           '<a href="scaling.html">scaling page</a> maps them.')
    return lines


def headline(src: Source) -> str:
    """The summary as an HTML list, or '' when there is nothing to compare yet."""
    intro, lines = pipeline_lines(src)
    sweeps = sweep_lines(src)
    parts = []
    if lines:
        parts += [f"<p>{intro}</p>", listed(lines)]
    if sweeps:
        parts += ["<p>The sweeps:</p>", listed(sweeps)]
    return "\n".join(["<h2>Headline</h2>", *parts]) if parts else ""


def listed(lines: list[str]) -> str:
    return '<ul class="headline">' + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"
