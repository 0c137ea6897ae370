"""DVC stage `report`: render the HTML report pages (reports/*.html) from the DuckDB store."""

from lmpipe.core.paths import REPORTS, STORE


def main() -> None:
    from lmpipe.report.render import render_report

    print(render_report(STORE, REPORTS))


if __name__ == "__main__":
    main()
