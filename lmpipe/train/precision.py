"""Mixed precision for the training step: which autocast a device and `train.precision` get, and
the loss scaler that fp16 needs."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 on GPU or CPU (oneDNN's bf16 matmuls on CPUs with avx512_bf16 or AMX); fp16 only on
    GPU, where a loss scaler guards it against underflow; fp32 (or fp16 on CPU) runs as is."""
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def loss_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 autocast needs loss scaling against gradient underflow; a no-op scaler otherwise."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")
