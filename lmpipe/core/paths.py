"""Where each stage reads and writes, relative to the project root (the DVC workspace)."""

from pathlib import Path

PARAMS = Path("params.yaml")
WORLD = Path("data/world")
TOKENS = Path("data/tokens")
TOKENIZER = TOKENS / "tokenizer"
TEACHER_CACHE = Path("data/teacher_cache")
RUNS = Path("runs")
METRICS = Path("metrics")
STORE = Path("store/lmpipe.duckdb")
REPORTS = Path("reports")


def run_dir(name: str) -> Path:
    return RUNS / name


def model_dir(name: str) -> Path:
    return RUNS / name / "model"
