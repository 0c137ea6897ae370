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

# Six 10 MB tensors made and freed, as a step's activations are: glibc's default thresholds
# adapt to the 10 MB block, so the 60 MB of free heap top is trimmed and the next cycle faults
# every page back in (2,441 pages a block).
CHILD = """
import json, resource, torch
from lmpipe.core.allocator import keep_freed_memory
applied = keep_freed_memory()
def cycle():
    blocks = [torch.ones(2_500_000) for _ in range(6)]
    del blocks
cycle()
cycle()  # the heap settles within two cycles
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(json.dumps({"applied": applied,
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
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
    assert system["faults"] > 10_000  # 6 x 2,441 pages faulted back in every cycle
    assert keep["faults"] < 50


def test_a_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("LMPIPE_CPU_ALLOCATOR", "jemalloc")
    with pytest.raises(ConfigError, match="LMPIPE_CPU_ALLOCATOR='jemalloc'.*'keep'.*'system'"):
        allocator._apply()


def test_system_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("LMPIPE_CPU_ALLOCATOR", "system")
    assert allocator._apply() is False
