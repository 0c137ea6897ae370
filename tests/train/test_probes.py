"""Probes: identity on values and gradients, right statistics, and their place in training."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lmpipe.core.run_folder import RunLog
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.build import build_model
from lmpipe.core.section import ConfigError
from lmpipe.train.params import ProbeParams, TrainParams
from lmpipe.train.loop import train
from lmpipe.train.probe_stats import attention_entropy, summary_stats
from lmpipe.train.probes import ProbeRecorder, attention_weights
from tests.conftest import TINY_MODEL

TWO_BLOCKS = TINY_MODEL.model_copy(update={"n_layers": 2})


def _forward_backward(model, ids):
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_a_probed_model_computes_exactly_what_the_unprobed_one_does():
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(0))
    plain = build_model(TWO_BLOCKS, seed=0).train()
    logits, grads = _forward_backward(plain, ids)

    probed = build_model(TWO_BLOCKS, seed=0).train()
    recorder = ProbeRecorder(probed, ProbeParams(enabled=True))
    with recorder.recording(step=7):
        probed_logits, probed_grads = _forward_backward(probed, ids)
    assert torch.equal(logits, probed_logits)
    assert all(torch.equal(grads[n], probed_grads[n]) for n in grads)

    seen = {(r["point"], r["kind"]) for r in recorder.records}
    for point in ["embeddings", "layers.0.attention", "layers.0.mlp", "layers.0.residual",
                  "layers.1.residual", "logits"]:
        assert {(point, "forward"), (point, "grad")} <= seen, point
    assert ("layers.1.attention_weights", "forward") in seen
    assert all(r["step"] == 7 for r in recorder.records)
    logits_record = next(r for r in recorder.records if r["point"] == "logits" and r["kind"] == "forward")
    assert logits_record["mean"] == pytest.approx(logits.double().mean().item(), rel=1e-6)
    assert logits_record["numel"] == logits.numel() and logits_record["depth"] == 3
    # detached: no hooks are left on the model
    assert not any(m._forward_hooks for m in probed.modules())


def test_statistics_of_a_known_tensor():
    x = torch.tensor([0.0, 0.0, 1.0, -2.0, 3.0, 4.0, -6.0, 0.0])
    s = summary_stats(x)
    assert s["mean"] == pytest.approx(0.0)
    assert s["rms"] == pytest.approx(math.sqrt((1 + 4 + 9 + 16 + 36) / 8))
    assert s["std"] == pytest.approx(s["rms"])                  # zero mean: std equals rms
    assert s["max_abs"] == 6.0 and s["frac_zero"] == 3 / 8 and s["numel"] == 8
    assert s["q50"] == pytest.approx(0.0) and s["q01"] == pytest.approx(-6 + 0.07 * 4)
    assert s["q99"] == pytest.approx(3 + 0.93 * 1)              # linear interpolation, like numpy
    big = torch.arange(1_000_000, dtype=torch.float32)
    assert summary_stats(big)["q50"] == pytest.approx(499_999.5, rel=1e-4)   # strided sample


def test_attention_entropy_of_uniform_and_one_hot_rows():
    uniform = torch.full((2, 4), 0.25)
    assert attention_entropy(uniform)["entropy"] == pytest.approx(math.log(4))
    assert attention_entropy(uniform)["entropy_norm"] == pytest.approx(1.0)
    one_hot = torch.eye(4)
    assert attention_entropy(one_hot) == {"entropy": pytest.approx(0.0), "entropy_norm": 0.0}
    causal = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])
    expected = (0 + math.log(2) + math.log(3)) / 3
    assert attention_entropy(causal)["entropy"] == pytest.approx(expected)
    assert attention_entropy(causal)["entropy_norm"] == pytest.approx(2 / 3)


def test_recomputed_attention_rows_equal_the_eager_attention_weights():
    model = build_model(TWO_BLOCKS, seed=1).eval()
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    captured = {}

    def hook(module, args, kwargs, output):
        captured["rows"] = attention_weights(module, kwargs["hidden_states"],
                                             kwargs["position_embeddings"],
                                             kwargs.get("attention_mask"))
    handle = model.model.layers[1].self_attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    handle.remove()
    assert torch.allclose(captured["rows"], out.attentions[1], atol=1e-6)


def test_bad_probe_settings_are_refused():
    with pytest.raises(ValueError, match="dump_steps"):
        ProbeParams(dump_steps=[5, 2])
    with pytest.raises(ValueError, match="points"):
        ProbeParams(points=["residual", "everything"])
    with pytest.raises(ValueError, match="out of range"):
        ProbeRecorder(build_model(TINY_MODEL, 0), ProbeParams(enabled=True, layers=[3]))


def _run(tiny_tokens, tokenizer, folder, probes: ProbeParams | None, steps: int = 12) -> list[dict]:
    tp = TrainParams(steps=steps, batch_size=4, warmup_steps=1, log_every=1, eval_every=steps,
                     **({"probes": probes} if probes else {}))
    with RunLog(folder, "train", "probed", {}) as run:
        train(build_model(TINY_MODEL, 0), TokenSplit.open(tiny_tokens, "train"),
              TokenSplit.open(tiny_tokens, "val"), tp, run, tokenizer.pad_token_id)
    return [json.loads(line) for line in (folder / "metrics.jsonl").open()]


def test_training_with_probes_logs_every_nth_step_and_dumps_a_window(tiny_tokens, tokenizer,
                                                                     tmp_path):
    plain = _run(tiny_tokens, tokenizer, tmp_path / "plain", None)
    probes = ProbeParams(enabled=True, every=5, dump_steps=[3, 4], points=["residual", "mlp",
                                                                           "attention_weights"])
    probed = _run(tiny_tokens, tokenizer, tmp_path / "probed", probes)
    assert [r["loss"] for r in probed if "loss" in r] == [r["loss"] for r in plain if "loss" in r]

    records = [json.loads(line) for line in (tmp_path / "probed" / "probes.jsonl").open()]
    assert sorted({r["step"] for r in records}) == [3, 4, 5, 10]
    assert {r["point"] for r in records} == {"layers.0.residual", "layers.0.mlp",
                                              "layers.0.attention_weights"}
    assert len([r for r in records if r["step"] == 10]) == 5   # 2 points x 2 kinds + entropy
    assert all(0 < r["entropy"] <= math.log(256) for r in records if "entropy" in r)
    dumps = sorted(p.name for p in (tmp_path / "probed" / "probes").iterdir())
    assert dumps == ["step_00000003.safetensors", "step_00000004.safetensors"]
    tensors = load_file(str(tmp_path / "probed" / "probes" / dumps[0]))
    assert set(tensors) == {"layers.0.residual.forward", "layers.0.residual.grad",
                            "layers.0.mlp.forward", "layers.0.mlp.grad",
                            "layers.0.attention_weights.forward"}
    assert tensors["layers.0.residual.forward"].shape[-1] == TINY_MODEL.d_model
    assert not (tmp_path / "plain" / "probes.jsonl").exists()


def test_probes_refuse_compile():
    with pytest.raises(ConfigError, match="compile"):
        train(build_model(TINY_MODEL, 0), None, None,
              TrainParams(compile=True, probes=ProbeParams(enabled=True)), None, 0)


def test_probe_records_reach_the_store_and_the_report(tiny_tokens, tokenizer, tmp_path):
    from lmpipe.report.render import render_report
    from lmpipe.store.index import index_runs, query

    probes = ProbeParams(enabled=True, every=2, points=["embeddings", "residual", "logits"])
    _run(tiny_tokens, tokenizer, tmp_path / "runs" / "probed", probes, steps=6)
    lines = (tmp_path / "runs" / "probed" / "probes.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    with open(tmp_path / "runs" / "probed" / "probes.jsonl", "a") as f:
        f.write('{"step": 8, "point": "lo')                     # a line cut short by a crash
    counts = index_runs(tmp_path / "runs", tmp_path / "db.duckdb")
    assert counts["skipped_lines"] == 1
    stats = [k for k, v in first.items()
             if k not in ("step", "point", "site", "layer", "depth", "kind")]
    assert counts["probes"] == len(lines) * len(stats)
    value = query(tmp_path / "db.duckdb", "SELECT value FROM probes WHERE step = ? AND point = ? "
                  "AND kind = ? AND stat = 'rms'", [first["step"], first["point"], first["kind"]])
    assert value["value"].tolist() == [pytest.approx(first["rms"])]
    render_report(tmp_path / "db.duckdb", tmp_path / "report")
    page = (tmp_path / "report" / "probes.html").read_text()
    assert 'vegaEmbed("#probes"' in page and "layers.0.residual" in page
    assert "No linear probes yet" in page
