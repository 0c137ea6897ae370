"""Names and units of the metrics the reports draw, so every axis and table row says what it
measures and in what unit ("validation cross-entropy (nats/token)", not "value").

`title(metric)` is the axis title, `unit(metric)` the unit alone; a metric not listed gets a title
from its name's suffix (`_s`, `_mb`, `_bytes`, `accuracy`) or, failing that, "(as logged)" so the
reader knows no unit is claimed. `INTEGER_METRICS` are counts, printed without decimals.
"""

from __future__ import annotations

# metric -> (what it is, its unit)
METRICS: dict[str, tuple[str, str]] = {
    "loss": ("training cross-entropy", "nats/token"),
    "val_loss": ("validation cross-entropy", "nats/token"),
    "val_ppl": ("validation perplexity", "e^(nats/token)"),
    "val_bpb": ("validation bits per byte", "bits/byte"),
    "recall": ("recall without the tool", "fraction correct"),
    "tool_accuracy": ("tool accuracy", "fraction correct"),
    "knowledge_bits": ("knowledge in the weights", "bits"),
    "bits_per_param": ("knowledge per parameter", "bits/parameter"),
    "parameters": ("parameters", "count"),
    "weight_bytes": ("weight storage", "bytes"),
    "file_bytes": ("model files on disk", "bytes"),
    "lr": ("learning rate", "per step"),
    "grad_norm": ("gradient norm", "L2"),
    "tokens": ("tokens seen", "count"),
    "tokens_per_s": ("throughput", "tokens/s"),
    "step_time_s": ("step time", "s"),
    "rss_mb": ("resident memory", "MiB"),
    "peak_rss_mb": ("peak resident memory", "MiB"),
    "mfu": ("model FLOPs utilization", "fraction of peak"),
    "qat_lambda": ("QAT quantization strength", "0–1"),
    "grad_cosine": ("cosine of the logit and hidden terms' gradients", "−1–1"),
    # a distillation or QAT run's `loss` is its objective, not plain cross-entropy (curves.py)
    "distill objective": ("distillation objective, weighted sum of its terms", "nats/token"),
    "qat objective": ("QAT objective, weighted distillation terms", "nats/token"),
}
INTEGER_METRICS = {"parameters", "weight_bytes", "file_bytes", "tokens", "n"}
SUFFIXES = [("_s", "s"), ("_mb", "MiB"), ("_bytes", "bytes"), ("accuracy", "fraction correct")]


def describe(metric: str) -> tuple[str, str]:
    """(what `metric` is, its unit)."""
    if metric in METRICS:
        return METRICS[metric]
    if metric.startswith("loss_"):  # a distillation term, logged per target before its weight
        return f"distillation term {metric[5:]}", "per target token, unweighted"
    for suffix, unit in SUFFIXES:
        if metric.endswith(suffix):
            return metric, unit
    return metric, "as logged"


def unit(metric: str) -> str:
    return describe(metric)[1]


def title(metric: str, *, log: bool = False) -> str:
    """The axis title: 'what (unit)', with ', log scale' when the axis is logarithmic."""
    what, how = describe(metric)
    return f"{what} ({how}{', log scale' if log else ''})"
