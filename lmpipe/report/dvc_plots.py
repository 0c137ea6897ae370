"""An offline page template for `dvc plots show`.

DVC's plots page loads Vega, Vega-Lite and vega-embed from a CDN (dvc_render's `{scripts}`
placeholder), so offline it renders blank ("vegaEmbed is not defined"). `install` writes
`.dvc/plots.html`: the same page with those libraries inlined from vl-convert's bundle (the one
Altair inlines into lmpipe's own reports) and no `{scripts}` placeholder, and points DVC's
`plots.html_template` setting at it. `make setup` runs it; so can anyone:

    .venv/bin/python -m lmpipe.report.dvc_plots [PROJECT]
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE_NAME = "plots.html"   # in .dvc/, where DVC resolves a relative html_template

PAGE = """<!DOCTYPE html>
<html>
<head>
  {refresh_tag}
  <meta charset="UTF-8">
  <title>DVC Plot</title>
  <script type="text/javascript">
    // vega-embed, Vega-Lite and Vega, inlined: this page makes no network request
    BUNDLE
  </script>
  <style>
    table { border-spacing: 15px; }
  </style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""


def page() -> str:
    """The template's text: DVC's page with the Vega libraries inlined."""
    from lmpipe.report.page import vega_bundle

    return PAGE.replace("BUNDLE", vega_bundle())


def install(project: Path) -> Path:
    """Write `.dvc/plots.html` in `project` and set `plots.html_template` to it in `.dvc/config`;
    returns the template's path."""
    from dvc.config import Config

    dvc_dir = Path(project) / ".dvc"
    if not dvc_dir.is_dir():
        raise FileNotFoundError(f"{dvc_dir}: not a DVC project (run `dvc init` first)")
    path = dvc_dir / TEMPLATE_NAME
    path.write_text(page(), encoding="utf-8")
    config = Config(dvc_dir=str(dvc_dir), validate=False)
    with config.edit("repo") as conf:
        conf.setdefault("plots", {})["html_template"] = TEMPLATE_NAME
    return path


if __name__ == "__main__":
    print(f"dvc plots template: {install(Path(sys.argv[1] if len(sys.argv) > 1 else '.'))}")
