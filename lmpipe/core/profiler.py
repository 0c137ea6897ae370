"""A light training profiler: phase timings, FLOPs and MFU, memory, eval rounds, trace windows.

Everything here is cheap enough to call on every training step. Nothing synchronises with a GPU
unless asked: on CUDA, `PhaseTimer(sync_cuda=True)` calls `torch.cuda.synchronize()` at each phase
boundary so the times are device times; without it the times are host times and queued kernels are
charged to whichever phase next waits on the device (usually the one calling `loss.item()`).

How the training loop uses it (one record per logged step; see each name's docstring)::

    timer = PhaseTimer(sync_cuda=False)
    fpt = flops_per_token(model.config, seq_len)           # once
    peak = measure_matmul_peak(device=device)              # once per process, ~0.5 s
    trace = maybe_trace(window, run.folder / "trace")      # e.g. window=[10, 13] or []
    for step in range(steps):
        trace.step(step)
        with timer.phase("data"): batch = ...
        with timer.phase("forward_backward"): loss = ...; loss.backward()
        with timer.phase("optimizer"): optimizer.step(); optimizer.zero_grad()
        if logging_step:
            record = {..., "tokens_per_s": tps, "mfu": mfu(tps, fpt, peak), **memory_record(device)}
            if eval_step:
                with timer.phase("eval"), eval_round() as eval_mem:
                    record["val_loss"] = evaluate_loss(...)
                record.update(eval_mem)
            with timer.phase("logging"): run.log({**record, **timer.pop()})
    trace.close()
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmpipe.core.archs import model_type

PHASES = ("data", "forward_backward", "optimizer", "logging", "eval")


# --------------------------------------------------------------------------------------------
# Phase timing


class _Phase:
    """The context manager `PhaseTimer.phase` returns; reused, so entering one allocates nothing."""

    __slots__ = ("_name", "_t0", "_timer")

    def __init__(self, timer: PhaseTimer, name: str) -> None:
        self._timer = timer
        self._name = name
        self._t0 = 0.0

    def __enter__(self) -> None:
        if self._timer._sync:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self._timer._sync:
            torch.cuda.synchronize()
        totals = self._timer._totals
        totals[self._name] = totals[self._name] + time.perf_counter() - self._t0


class PhaseTimer:
    """Accumulates wall-clock seconds per named phase between two `pop()` calls.

    `with timer.phase("data"): ...` adds the block's duration to "data". Any name is allowed; the
    usual ones are in `PHASES`. Different phases may nest (the outer one includes the inner one's
    time); a phase may not nest inside itself. `sync_cuda=True` synchronises CUDA at each
    boundary (ignored without CUDA).
    """

    def __init__(self, sync_cuda: bool = False) -> None:
        self._sync = bool(sync_cuda) and torch.cuda.is_available()
        self._totals: dict[str, float] = {}
        self._phases: dict[str, _Phase] = {}

    def phase(self, name: str) -> _Phase:
        ctx = self._phases.get(name)
        if ctx is None:
            ctx = self._phases[name] = _Phase(self, name)
            self._totals[name] = 0.0
        return ctx

    def pop(self) -> dict[str, float]:
        """Seconds per phase since the last pop as `{"time_<phase>_s": seconds}`, then reset.

        Every phase ever entered is reported (0.0 if not entered since the last pop), so the
        columns of metrics.jsonl stay the same from one record to the next.
        """
        out = {f"time_{name}_s": seconds for name, seconds in self._totals.items()}
        for name in self._totals:
            self._totals[name] = 0.0
        return out


# --------------------------------------------------------------------------------------------
# FLOPs, peak and MFU


def _mamba_matmuls(config: Any) -> int:
    """Weights in one Mamba block's matrix multiplies: in_proj (d -> 2E), x_proj (E -> R + 2S),
    dt_proj (R -> E), out_proj (E -> d); the conv and the scan are elementwise, left out."""
    d, e = config.hidden_size, config.intermediate_size
    r, s = int(config.time_step_rank), config.state_size
    return d * 2 * e + e * (r + 2 * s) + r * e + e * d


def _mamba2_matmuls(config: Any) -> int:
    """Weights in one Mamba-2 block's matrix multiplies: in_proj (d -> 2E + 2GS + H: gate, x, B,
    C, dt) and out_proj (E -> d); the conv, the scan's chunked products (no weights) and the
    gated norm are left out, as Mamba's scan is."""
    d = config.hidden_size
    e = int(config.expand * d)
    gs, heads = config.n_groups * config.state_size, config.num_heads
    return d * (2 * e + 2 * gs + heads) + e * d


def _hawk_matmuls(config: Any) -> int:
    """Weights in one Hawk block's matrix multiplies: linear_x, linear_y (d -> W), linear_out
    (W -> d), the RG-LRU's two block-diagonal gates (W^2 / blocks each), the gated MLP (3 d F)."""
    d, w, f = config.hidden_size, config.lru_width, config.intermediate_size // 2
    return 3 * d * w + 2 * w * w // config.num_attention_heads + 3 * d * f


# model_type -> weights per block in matrix multiplies, for the models without attention
# (the recurrent architectures of lmpipe/core/archs.py)
RECURRENT_MATMULS = {model_type("mamba"): _mamba_matmuls, model_type("mamba2"): _mamba2_matmuls,
                     model_type("hawk"): _hawk_matmuls}


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token of a Llama-style transformers config (PaLM appendix B estimate).

        flops_per_token = 6 * N + 12 * L * H * Q * T

    N is the number of weights taking part in matrix multiplies, excluding the input embedding but
    including the LM head (counted even when tied: its matmul is still done):
        per layer  d*(H*Q) [q] + 2*d*(H_kv*Q) [k, v] + (H*Q)*d [o] + 3*d*F [gate, up, down]
        plus       d*V for the LM head,
    with d = hidden_size, F = intermediate_size, V = vocab_size, L = num_hidden_layers,
    H = num_attention_heads, H_kv = num_key_value_heads, Q = head_dim. Norms and biases are left
    out. 6 = 2 FLOPs per multiply-add times (1 forward + 2 backward). The attention term counts
    QK^T and AV over a context of T = `seq_len` tokens with no causal discount (as PaLM does).
    For length-grouped batches pass the padded batch length the model actually ran on.

    Mamba, Mamba-2 and RecurrentGemma (Hawk) have no attention: 6 * N with N their blocks'
    matmul weights (RECURRENT_MATMULS) plus the LM head, independent of `seq_len` (Mamba-2's
    chunked scan has seq-dependent products too, but no weights: left out, as for Mamba).
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}")
    recurrent = RECURRENT_MATMULS.get(getattr(config, "model_type", None))
    if recurrent is not None:
        return float(6 * (config.num_hidden_layers * recurrent(config)
                          + config.hidden_size * config.vocab_size))
    d = config.hidden_size
    n_layers = config.num_hidden_layers
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or d // n_heads
    per_layer = (d * n_heads * head_dim + 2 * d * n_kv * head_dim + n_heads * head_dim * d
                 + 3 * d * config.intermediate_size)
    n_matmul = n_layers * per_layer + d * config.vocab_size
    return float(6 * n_matmul + 12 * n_layers * n_heads * head_dim * seq_len)


_PEAK_CACHE: dict[tuple[str, torch.dtype, int, int], float] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        size: int = 1024, seconds: float = 0.5) -> float:
    """Measured FLOP/s of a `size`x`size` matmul loop on `device` with the current thread count.

    Warms up, then times back-to-back matmuls in chunks for about `seconds` and returns the best
    chunk's rate (2*size**3 FLOPs per matmul). Cached in-process per (device, dtype, torch threads,
    size): later calls return at once. Synchronises CUDA, so call it once before training.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (str(dev), dtype, torch.get_num_threads(), size)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    c = torch.empty(size, size, device=dev, dtype=dtype)
    flop = 2.0 * size**3
    with torch.no_grad():
        torch.matmul(a, b, out=c)  # first call: library initialisation, not timed
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(3):
            torch.matmul(a, b, out=c)
        _sync(dev)
        per_matmul = max((time.perf_counter() - t0) / 3, 1e-9)
        reps = max(1, int(seconds / 5 / per_matmul))  # about five timed chunks
        best, deadline = 0.0, time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b, out=c)
            _sync(dev)
            best = max(best, reps * flop / (time.perf_counter() - t0))
            if time.perf_counter() >= deadline:
                break
    _PEAK_CACHE[key] = best
    return best


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak (a fraction, not percent)."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return tokens_per_s * flops_per_token / peak_flops


# --------------------------------------------------------------------------------------------
# Memory


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # not on POSIX
        return math.nan
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024.0  # bytes vs KiB


def rss_mb() -> float:
    """Current resident memory of this process in MiB (/proc/self/statm; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        return _peak_rss_mb()


def memory_record(device: str | torch.device = "cpu") -> dict[str, float]:
    """`rss_mb` (current), `peak_rss_mb` (process peak), and on CUDA `cuda_peak_mb` (peak allocated
    since start or the last `torch.cuda.reset_peak_memory_stats`) and `cuda_allocated_mb`. MiB."""
    record = {"rss_mb": rss_mb(), "peak_rss_mb": _peak_rss_mb()}
    dev = torch.device(device)
    if dev.type == "cuda":
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        record["cuda_allocated_mb"] = torch.cuda.memory_allocated(dev) / 2**20
    return record


@contextmanager
def eval_round() -> Iterator[dict[str, float]]:
    """Wrap an evaluation: gc.collect() before and after, and record resident memory.

    Yields a dict filled in on exit, ready to merge into the step's metrics record:
    `rss_before_eval_mb` (after the first collection: the training working set),
    `eval_rss_mb` (at the end of the evaluation, before collecting) and
    `rss_after_eval_mb` (after the second collection).
    A full collection walks every live object: ~0.3 s per call here once transformers and a model
    are loaded. Call `gc.freeze()` once after setup (model, optimizer, data) to make it ~free.
    """
    gc.collect()
    record: dict[str, float] = {"rss_before_eval_mb": rss_mb()}
    try:
        yield record
    finally:
        record["eval_rss_mb"] = rss_mb()
        gc.collect()
        record["rss_after_eval_mb"] = rss_mb()


# --------------------------------------------------------------------------------------------
# Trace window


class TraceWindow:
    """Record a torch.profiler trace of training steps `window[0]` up to (not including) `window[1]`.

    Call `.step(step)` once at the start of every training step and `.close()` after the loop.
    The profiler starts at the first step inside the window and, at the first step at or past
    `window[1]` (or at `close()`), stops and writes a Chrome trace to `out_dir/trace.json`
    (open it in chrome://tracing or https://ui.perfetto.dev). An empty window does nothing.
    """

    def __init__(self, window: Sequence[int], out_dir: str | Path) -> None:
        window = list(window or [])
        if window and (len(window) != 2 or not 0 <= window[0] < window[1]):
            raise ValueError(f"trace window must be [] or [start, stop] with 0 <= start < stop, "
                             f"got {window}")
        self.window = window
        self.path = Path(out_dir) / "trace.json"
        self._prof: torch.profiler.profile | None = None
        self._done = not window

    def step(self, step: int) -> None:
        if self._done:
            return
        start, stop = self.window
        if self._prof is None:
            if start <= step < stop:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self._prof = torch.profiler.profile(activities=activities)
                self._prof.__enter__()
        elif step >= stop:
            self.close()
        else:
            self._prof.step()  # marks the step boundary in the trace

    def close(self) -> None:
        """Stop the profiler if it runs and write the trace; safe to call more than once."""
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._prof.export_chrome_trace(str(self.path))
            self._prof = None
        self._done = True


def maybe_trace(window: Sequence[int], out_dir: str | Path) -> TraceWindow:
    """A `TraceWindow` for `window` ([] for none), writing `out_dir/trace.json`."""
    return TraceWindow(window, out_dir)
