"""The probes notebook runs top to bottom on a saved model (nbclient, a real kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmpipe.model.build import build_model, save_model
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_probes_notebook_executes(tmp_path, tokenizer, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    run = tmp_path / "runs" / "tiny"
    save_model(build_model(TINY_MODEL.model_copy(update={"n_layers": 2}), 0), tokenizer,
               run / "model")
    monkeypatch.setenv("LMPIPE_RUN", str(run))
    notebook = nbformat.read(ROOT / "notebooks" / "probes.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                     for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))
    assert "2 blocks" in text, text[:2000]
    assert "18 records from 10 points" in text, text[:2000]  # 8 points x 2 kinds + 2 entropies
    assert "layers.1.residual" in text and "entropy_norm" in text
    assert not any(o.get("output_type") == "error" for c in notebook.cells
                   for o in c.get("outputs", []))
    assert os.environ["LMPIPE_RUN"] == str(run)
