"""Foundations every stage shares: where files live, atomic outputs, JSONL logs, run folders,
progress, the profiler and the dialog protocol."""
