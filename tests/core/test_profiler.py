"""The training profiler: phase timings, FLOPs/MFU arithmetic, memory records, eval rounds, traces."""

import json
import math
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmpipe.core import profiler
from lmpipe.core.profiler import (
    PhaseTimer,
    eval_round,
    flops_per_token,
    maybe_trace,
    measure_matmul_peak,
    memory_record,
    mfu,
)


def test_phase_timer_accumulates_per_phase_and_resets_on_pop():
    timer = PhaseTimer()
    for _ in range(2):
        with timer.phase("data"):
            time.sleep(0.02)
        with timer.phase("optimizer"):
            time.sleep(0.01)
    first = timer.pop()
    assert set(first) == {"time_data_s", "time_optimizer_s"}
    assert 0.04 <= first["time_data_s"] < 0.07
    assert 0.02 <= first["time_optimizer_s"] < 0.05
    with timer.phase("eval"):
        time.sleep(0.01)
    second = timer.pop()  # every phase seen so far is reported, reset to zero since the last pop
    assert second["time_data_s"] == 0.0 and second["time_optimizer_s"] == 0.0
    assert 0.01 <= second["time_eval_s"] < 0.04


def test_phase_timer_counts_a_phase_that_raises():
    timer = PhaseTimer()
    with pytest.raises(RuntimeError), timer.phase("forward_backward"):
        time.sleep(0.01)
        raise RuntimeError("boom")
    assert timer.pop()["time_forward_backward_s"] >= 0.01


SMALL = {"vocab_size": 100, "hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1}


def test_flops_per_token_matches_a_hand_count():
    config = LlamaConfig(**SMALL)  # head_dim 8, one kv head
    # per layer: q 16*16 + k 16*8 + v 16*8 + o 16*16 + mlp 3*16*64 = 3840; 2 layers + head 16*100
    n = 2 * 3840 + 1600
    assert n == 9280
    assert flops_per_token(config, seq_len=32) == 6 * 9280 + 12 * 2 * 2 * 8 * 32 == 67968
    assert flops_per_token(config, 64) - flops_per_token(config, 32) == 12 * 2 * 2 * 8 * 32
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(config, 0)


def test_flops_per_token_counts_every_linear_weight_of_the_real_model():
    config = LlamaConfig(**SMALL, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(config, seq_len=1) == 6 * linear + 12 * 2 * 2 * 8


def test_matmul_peak_is_sane_and_cached():
    profiler._PEAK_CACHE.clear()
    peak = measure_matmul_peak(size=128, seconds=0.1)
    assert math.isfinite(peak) and 1e7 < peak < 1e13
    t0 = time.perf_counter()
    assert measure_matmul_peak(size=128, seconds=0.1) == peak
    assert time.perf_counter() - t0 < 1e-3


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e6, 1e10) == pytest.approx(0.6)
    assert mfu(0.0, 6e6, 1e10) == 0.0
    with pytest.raises(ValueError):
        mfu(1000.0, 6e6, 0.0)


def test_memory_record_on_cpu_follows_an_allocation():
    before = memory_record("cpu")
    assert set(before) == {"rss_mb", "peak_rss_mb"}
    assert 0 < before["rss_mb"] <= before["peak_rss_mb"] + 1
    block = torch.ones(16 * 2**20)  # 64 MiB, touched
    after = memory_record("cpu")
    assert 48 < after["rss_mb"] - before["rss_mb"] < 80
    assert after["peak_rss_mb"] >= after["rss_mb"] - 1
    del block


def test_eval_round_collects_before_and_after_and_records_rss(monkeypatch):
    calls = []
    monkeypatch.setattr(profiler.gc, "collect", lambda *a, **k: calls.append(1) or 0)
    with eval_round() as mem:
        assert len(calls) == 1
        block = torch.ones(8 * 2**20)  # 32 MiB held during eval
    assert len(calls) == 2
    assert set(mem) == {"rss_before_eval_mb", "eval_rss_mb", "rss_after_eval_mb"}
    assert mem["eval_rss_mb"] - mem["rss_before_eval_mb"] > 24
    del block
    with pytest.raises(KeyError), eval_round():
        raise KeyError("eval failed")
    assert len(calls) == 4


def _loop(trace, steps=5):
    x = torch.randn(32, 32)
    for step in range(steps):
        trace.step(step)
        if step == 0:
            torch.cos(x)  # before the window
        elif step < 3:
            x = torch.mm(x, x).tanh()  # inside the window [1, 3)
        else:
            torch.sin(x)  # after it
    trace.close()


def test_trace_window_writes_only_the_window(tmp_path):
    _loop(maybe_trace([1, 3], tmp_path / "trace"))
    events = json.loads((tmp_path / "trace" / "trace.json").read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert "aten::mm" in names and "aten::tanh" in names
    assert "aten::cos" not in names and "aten::sin" not in names


def test_empty_trace_window_does_nothing(tmp_path):
    _loop(maybe_trace([], tmp_path / "trace"))
    assert not (tmp_path / "trace").exists()
    with pytest.raises(ValueError, match="trace window"):
        maybe_trace([3, 1], tmp_path)
