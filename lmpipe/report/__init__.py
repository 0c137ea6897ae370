"""The HTML reports: self-contained Altair pages drawn from the run database
(`lmpipe.report.render.render_report` writes them; each page has its module here)."""
