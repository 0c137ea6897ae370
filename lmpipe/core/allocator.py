"""Keep the memory a CPU run frees inside the process, so the next step does not fault it back in.

glibc's malloc gives large blocks back to the kernel: a block above its mmap threshold is
unmapped when freed, and free space above its trim threshold at the top of the heap is released.
Both thresholds adapt upwards only to the largest single block freed, while a training step frees
its whole backward's activations at once. So every step of CPU training got its pages anew from
the kernel, which zero-fills them on first touch: ~3,000-4,000 page faults a step at the nanoGPT
Shakespeare shape, ~15% of the step's time (bench/allocator.py). PyTorch's CPU tuning guide
points at the same cost when it recommends preloading jemalloc or tcmalloc; this is that effect
without a preload: mmap only above glibc's largest threshold (32 MiB) and release the heap's free
top only above 1 GiB. Peak memory is unchanged; the resident size stays at the peak instead of
falling between steps.

Stages (lmpipe/stage.py) and the training loop call `keep_freed_memory()`; it changes nothing a
run computes. `LMPIPE_CPU_ALLOCATOR=system` leaves glibc's defaults alone. On a C library other
than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from lmpipe.core.section import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for it on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (module docstring) once per process; whether they are in force."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    choice = os.environ.get("LMPIPE_CPU_ALLOCATOR", "keep")
    if choice not in ("keep", "system"):
        raise ConfigError(f"LMPIPE_CPU_ALLOCATOR={choice!r}: expected 'keep' (the default) or "
                         "'system' (glibc's own thresholds)")
    if choice == "system" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    # mallopt returns 1 on success; setting either threshold also ends glibc's adaptation of both
    return (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
