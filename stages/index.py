"""DVC stage `index`: load every run folder into the DuckDB store (incrementally)."""

from lmpipe.core.paths import RUNS, STORE


def main() -> None:
    from lmpipe.store.index import index_runs

    counts = index_runs(RUNS, STORE)
    print(f"indexed into {STORE}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
