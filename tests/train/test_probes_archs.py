"""Probes on Mamba and Hawk: a probed model computes exactly what the unprobed one does, a few real
training steps write every site of the arch (mixer, and for Hawk the MLP; no attention) with
forward values and gradients, the records reach the store and the report, and a site the arch
does not have is refused naming the field."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.model.mamba import parallel_scans
from lmpipe.model.params import ModelParams
from lmpipe.train.loop import train
from lmpipe.train.params import SITES_BY_MODEL_TYPE, ProbeParams, TrainParams
from lmpipe.train.probes import LAYOUTS, ProbeRecorder

POINTS = {
    "mamba": ["embeddings", "layers.0.mixer", "layers.0.residual", "layers.1.mixer",
              "layers.1.residual", "logits"],
    "hawk": ["embeddings", "layers.0.mixer", "layers.0.mlp", "layers.0.residual",
             "layers.1.mixer", "layers.1.mlp", "layers.1.residual", "logits"],
}
POINTS["mamba2"] = POINTS["mamba"]  # Mamba-2's blocks are Mamba's: a mixer, no MLP


def _model(arch: str) -> torch.nn.Module:
    return build_model(ModelParams(arch=arch, d_model=16, n_layers=2, d_state=4), seed=0)


def test_every_model_type_has_a_layout_of_its_sites():
    assert set(LAYOUTS) == set(SITES_BY_MODEL_TYPE)
    for kind, layout in LAYOUTS.items():
        sites = {"embeddings", "logits", *layout.sites} | (
            {"attention_weights"} if layout.attention else set())
        assert sites == set(SITES_BY_MODEL_TYPE[kind]), kind


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_a_probed_recurrent_model_computes_exactly_what_the_unprobed_one_does(arch):
    ids = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    runs = []
    for probed in (False, True):
        model = _model(arch).train()
        parallel_scans(model)  # as the training loop runs a Mamba
        recorder = ProbeRecorder(model, ProbeParams(enabled=True, dump_steps=[1, 1]))
        with recorder.recording(step=1) if probed else torch.enable_grad():
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
        runs.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits, grads), (probed_logits, probed_grads) = runs
    assert torch.equal(logits, probed_logits)
    assert all(torch.equal(grads[n], probed_grads[n]) for n in grads)
    assert recorder.names == POINTS[arch]
    # each block adds its mixer's (and Hawk's MLP's) output to the stream it reads: the raw
    # records must satisfy that sum, whichever module a site was read from
    raw = {name.removesuffix(".forward"): t for name, t in recorder.raw.items()
           if name.endswith(".forward")}
    stream = raw["embeddings"] * (model.config.hidden_size ** 0.5 if arch == "hawk" else 1.0)
    for layer in (0, 1):
        update = sum(raw[f"layers.{layer}.{site}"] for site in ("mixer", "mlp")
                     if f"layers.{layer}.{site}" in raw)
        torch.testing.assert_close(raw[f"layers.{layer}.residual"], stream + update,
                                   rtol=1e-5, atol=1e-5)
        stream = raw[f"layers.{layer}.residual"]
    # the logits point is what the model outputs (for Hawk, after its soft cap)
    [seen] = [r for r in recorder.records if r["point"] == "logits" and r["kind"] == "forward"]
    assert seen["max_abs"] == pytest.approx(logits.abs().max().item())
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hawk"])
def test_training_a_recurrent_model_with_probes(arch, tiny_tokens, tokenizer, tmp_path):
    from lmpipe.report.render import render_report
    from lmpipe.store.index import index_runs, query

    folder = tmp_path / "runs" / arch
    tp = TrainParams(steps=4, batch_size=4, warmup_steps=1, log_every=1, eval_every=4,
                     eval_batches=1, probes=ProbeParams(enabled=True, every=2))
    with RunLog(folder, "train", arch, {}) as run:
        train(_model(arch), TokenSplit.open(tiny_tokens, "train"),
              TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    records = [json.loads(line) for line in (folder / "probes.jsonl").open()]
    assert sorted({r["step"] for r in records}) == [2, 4]
    points = list(dict.fromkeys(r["point"] for r in records))
    assert sorted(points) == sorted(POINTS[arch])
    assert {(r["point"], r["kind"]) for r in records} == {
        (p, k) for p in POINTS[arch] for k in ("forward", "grad")}
    assert len(records) == 2 * 2 * len(POINTS[arch])
    stats = [v for r in records for k, v in r.items()
             if k not in ("step", "point", "site", "layer", "depth", "kind")]
    assert all(math.isfinite(v) for v in stats)
    by = {(r["step"], r["point"], r["kind"]): r for r in records}
    for layer in (0, 1):
        mixer, residual = (by[(4, f"layers.{layer}.{site}", "forward")]
                           for site in ("mixer", "residual"))
        assert mixer["site"] == "mixer" and mixer["layer"] == layer and mixer["depth"] == layer + 1
        # the mixer's output is a small update added to the stream, not the stream itself
        assert mixer["rms"] != pytest.approx(residual["rms"], rel=1e-3)
        assert mixer["mean"] != pytest.approx(residual["mean"], rel=1e-3)
        assert by[(4, f"layers.{layer}.mixer", "grad")]["rms"] > 0
    assert by[(4, "logits", "forward")]["depth"] == 3

    index_runs(tmp_path / "runs", tmp_path / "db.duckdb")
    mixers = query(tmp_path / "db.duckdb", "SELECT DISTINCT point FROM probes WHERE site = "
                   "'mixer' ORDER BY point")
    assert mixers["point"].tolist() == ["layers.0.mixer", "layers.1.mixer"]
    render_report(tmp_path / "db.duckdb", tmp_path / "report")
    page = (tmp_path / "report" / "probes.html").read_text()
    assert 'vegaEmbed("#probes"' in page and "layers.1.mixer" in page


def test_a_site_mamba_does_not_have_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"train\.probes\.points: \['attention'\] are not sites "
                       r"of a mamba model; expected some of \['embeddings', 'mixer', "
                       r"'residual', 'logits'\]"):
        ProbeRecorder(_model("mamba"), ProbeParams(enabled=True, points=["attention", "mixer"]))
