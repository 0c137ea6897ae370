"""Shared fixtures: a tiny people world and its tokens, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
