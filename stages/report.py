"""DVC stage `report`: render reports/index.html from the DuckDB store."""

from lmpipe.cli import main

if __name__ == "__main__":
    main(["report"])
