"""DVC stage `index`: load every run folder into the DuckDB store."""

from lmpipe.cli import main

if __name__ == "__main__":
    main(["index"])
