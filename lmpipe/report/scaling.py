"""scaling.html: how much a model of N parameters knows, and how accuracy with and without the
tool changes over (parameters, number of facts). The page, a module a section:

    scaling_data        the evaluated models, one row each: parameters, facts, training mode,
                        knowledge bits, accuracies and architecture, from the store
    scaling_archs       when the models differ in architecture: tool accuracy (trained and
                        held-out people) and recall against parameters, a line per arch
    scaling_knowledge   knowledge bits against parameters, with the 2 bits/param line
    scaling_maps        accuracy maps over (parameters, facts), drawn only from models of one
                        kind that span a lattice (a sweep's)
    scaling_models      every model not on a map (all of them on the default run, where the
                        distilled, QAT, PTQ and int8 models share the scratch student's size),
                        one labelled point each
    conversations       the sweeps' accuracy per turn of a conversation, when they recorded it

Architectures (`model.arch`: llama, mamba, mamba2, hawk) are compared side by side, never
averaged: when the models differ in arch, the knowledge chart and the accuracy map get one panel
per arch and the per-model chart names each model's arch (recipes/in-tool-learning/archs.yaml
sweeps them at matched parameter counts).
"""

from __future__ import annotations

from lmpipe.report.conversations import add_sweep_turns
from lmpipe.report.scaling_archs import add_arch_comparison
from lmpipe.report.page import NO_RUNS, Page
from lmpipe.report.scaling_data import load
from lmpipe.report.scaling_knowledge import add_knowledge
from lmpipe.report.scaling_maps import add_maps, map_kind
from lmpipe.report.scaling_models import add_model_chart, model_rows
from lmpipe.report.source import Source


def build(src: Source) -> Page:
    """scaling.html from the store behind `src`."""
    page = Page("scaling", "scaling")
    if src.empty:
        page.add(NO_RUNS)
        return page
    models = load(src)
    add_arch_comparison(page, models)
    add_knowledge(page, models)
    if not models.empty:
        kind = map_kind(models)
        mapped = add_maps(page, models, kind)
        if not mapped and model_rows(models).empty:
            page.add("<p>No evaluated model has <code>recall</code> or <code>tool_accuracy</code> "
                     "on trained people yet.</p>")
        on_map = models["model"] == kind
        add_model_chart(page, models[~on_map] if mapped else models,
                        mapped=kind if mapped else None)
    add_sweep_turns(page, src)
    return page
