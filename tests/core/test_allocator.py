"""lmpipe/core/allocator.py: memory a step frees stays in the process (no page faults to get it
back), and the opt-out and bad values behave as documented."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from lmpipe.core import allocator
from lmpipe.core.section import ConfigError

# Six 10 MB blocks made, written and freed, as a step's activations are. On glibc's defaults the
# first free raises the mmap threshold to 10 MB and the trim threshold to 20 MB, so the 60 MB of
# free heap top is handed back every cycle and the next faults all 6 x 2,560 pages in again.
# Through malloc itself, as nothing else allocates between the blocks; torch's tensors are
# checked under `keep` only: on glibc's defaults whether their free space is trimmed depends on
# where the interpreter's own small allocations happened to land.
CHILD = """
import ctypes, ctypes.util, json, resource
import torch
from lmpipe.core.allocator import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 10 * 1024 * 1024
def malloc_cycle():
    blocks = [libc.malloc(SIZE) for _ in range(6)]
    for block in blocks:
        ctypes.memset(block, 1, SIZE)
    for block in blocks:
        libc.free(block)
def tensor_cycle():
    blocks = [torch.ones(2_500_000) for _ in range(6)]
    del blocks
def faults_per_cycle(cycle):
    cycle()
    cycle()  # the heap settles within two cycles
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        cycle()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"applied": applied, "malloc": faults_per_cycle(malloc_cycle),
                  "tensors": faults_per_cycle(tensor_cycle)}))
"""


def faults_per_cycle(mode: str) -> dict:
    env = dict(os.environ, LMPIPE_CPU_ALLOCATOR=mode, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    system, keep = faults_per_cycle("system"), faults_per_cycle("keep")
    assert (system["applied"], keep["applied"]) == (False, True)
    assert system["malloc"] > 12_000  # 6 x 2,560 pages faulted back in every cycle
    assert keep["malloc"] < 50
    # torch's blocks settle too (a few hundred pages move with the interpreter's own small
    # allocations, against 14,616 when all six are faulted back in)
    assert keep["tensors"] < 2_000


def test_a_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("LMPIPE_CPU_ALLOCATOR", "jemalloc")
    with pytest.raises(ConfigError, match="LMPIPE_CPU_ALLOCATOR='jemalloc'.*'keep'.*'system'"):
        allocator._apply()


def test_system_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("LMPIPE_CPU_ALLOCATOR", "system")
    assert allocator._apply() is False
