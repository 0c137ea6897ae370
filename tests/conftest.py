"""Shared fixtures: a warm stage server for the session, a tiny people world and its tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lmpipe.core.warm_server import stage_server
from lmpipe.data.tokenizer import build_byte_tokenizer
from lmpipe.data.tokens import tokenize_world
from lmpipe.data.world import write_world
from lmpipe.model.build import build_model
from lmpipe.data.params import WorldParams
from lmpipe.model.params import ModelParams

TINY_MODEL = ModelParams(d_model=16, n_layers=1, n_heads=2, max_seq_len=256)

# Tiny models run fastest on one thread, and a second thread only fights the other process
# on a 2-core CI machine.
torch.set_num_threads(1)
# `make test` runs a pytest worker a core (pytest-xdist): the processes a test starts (DVC stages,
# drivers) take one thread each too, unless the test sets its own count.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# The files that take minutes (`--durations`, bench/README.md "CI time"), longest first: sent to
# the workers first, so none is left running one alone at the end.
LONGEST_FILES = ("e2e/test_headline.py", "sweep/test_sweep.py", "sweep/test_recipes.py",
                 "e2e/test_pipeline.py", "train/test_resume_ddp.py", "eval/test_linear_probe.py",
                 "flows/test_async_eval.py", "eval/test_harness.py",
                 "train/test_resume_ddp_archs.py", "eval/test_harness_archs.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(LONGEST_FILES) if path.endswith(name)),
                    len(LONGEST_FILES))

    items.sort(key=rank)  # stable: the order inside a file, and of the other files, stays


@pytest.fixture(scope="session", autouse=True)
def warm_stages():
    """The DVC stages the tests start run in one warm interpreter (lmpipe/core/warm_server.py,
    as `make run` runs them): torch and transformers are imported once, not once a stage.
    tests/core/test_warm_server.py checks a stage there does what it does in a fresh process."""
    with stage_server():
        yield


@pytest.fixture(scope="session")
def tokenizer():
    return build_byte_tokenizer()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(WorldParams(seed=3, people=30, heldout_people=10, bios_per_person=1,
                            qa_dialogs=True), out)
    return out


@pytest.fixture(scope="session")
def tiny_tokens(tiny_world, tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokens")
    tokenize_world(tiny_world, tokenizer, out, val_fraction=0.1, loss_on="assistant", seed=0)
    return out


@pytest.fixture()
def tiny_model():
    return build_model(TINY_MODEL, seed=0).eval()
