"""The recurrent architectures resume and run data-parallel exactly as llama does
(tests/train/test_resume_ddp.py): a SIGKILLed run reruns from its checkpoint to the very weights
of an uninterrupted run, and 2-process DDP (gloo) equals one process with the same global batch.

Run as a script, this file is the training driver: tests/drivers/train_tiny.py (its options, its
SIGKILL) with the tiny llama replaced by a tiny model of the architecture named first, the size
tests/train/test_train_archs.py trains:
    python test_resume_ddp_archs.py ARCH TOKENS_DIR RUN_DIR STEPS [train_tiny options]
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRIVER = Path(__file__).parents[1] / "drivers" / "train_tiny.py"
# A new recurrent architecture is one more entry here.
RECURRENT_ARCHS = ["mamba", "mamba2", "hawk"]
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
STEPS, OPTIONS = 12, ("--set", "checkpoint_every=4")


def _train(arch, tokens, run, *extra, launcher=(sys.executable,), check=True):
    result = subprocess.run([*launcher, __file__, arch, str(tokens), str(run), str(STEPS),
                             *OPTIONS, *extra],
                            capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


def _summary(run):
    return json.loads((Path(run) / "summary.json").read_text())


def _weights(run, step=STEPS):
    return load_file(Path(run) / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


def _checkpoints(run):
    return sorted(p.name for p in (Path(run) / "checkpoints").iterdir())


@pytest.fixture(scope="module", params=RECURRENT_ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def straight(arch, tiny_tokens, tmp_path_factory):
    """The uninterrupted one-process run both tests compare with. It trains in this process
    (the driver's code, one thread as in the subprocesses): starting a Python with torch and
    transformers costs more than the whole run."""
    run = tmp_path_factory.mktemp(f"straight-{arch}")
    argv = sys.argv
    sys.argv = [__file__, arch, str(tiny_tokens), str(run), str(STEPS), *OPTIONS]
    try:
        _main()
    finally:
        sys.argv = argv
    return run


def test_sigkill_then_rerun_reaches_the_uninterrupted_weights(arch, straight, tiny_tokens,
                                                              tmp_path):
    killed = tmp_path / "killed"
    died = _train(arch, tiny_tokens, killed, "--kill-at", "7", check=False)
    assert died.returncode == -9  # SIGKILL, between the checkpoints of steps 4 and 8
    assert _checkpoints(killed) == ["step_00000004"] and not (killed / "summary.json").exists()
    _train(arch, tiny_tokens, killed)
    a, b = _summary(straight), _summary(killed)
    assert a["resumed_from"] is None and b["resumed_from"] == 4
    assert b["final_train_loss"] == a["final_train_loss"]
    assert b["final_val_loss"] == a["final_val_loss"]
    assert b["initial_val_loss"] == a["initial_val_loss"] and b["tokens_seen"] == a["tokens_seen"]
    assert b["final_train_loss"] < a["initial_val_loss"]  # and it did train
    wa, wb = _weights(straight), _weights(killed)
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []  # bit-for-bit


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(arch, straight,
                                                                        tiny_tokens, tmp_path):
    ddp = tmp_path / "ddp"
    _train(arch, tiny_tokens, ddp, launcher=TORCHRUN)
    a, b = _summary(straight), _summary(ddp)
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-5)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=1e-5)
    assert b["tokens_seen"] == a["tokens_seen"]
    wa, wb = _weights(straight), _weights(ddp)
    assert wa.keys() == wb.keys()
    for key in wa:  # every parameter got the global gradient, not one process's half
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-6,
                                   msg=lambda message, key=key: f"{key}: {message}")


def _main() -> None:
    """The driver: train_tiny.py building `arch` at test_train_archs.py's tiny size."""
    from lmpipe.model.build import build_model
    from lmpipe.model.params import ModelParams

    arch = sys.argv.pop(1)
    spec = importlib.util.spec_from_file_location("train_tiny", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    driver.build_model = lambda _llama, seed: build_model(
        ModelParams(arch=arch, d_model=16, n_layers=1, d_state=4), seed=seed)
    driver.main()


if __name__ == "__main__":
    _main()
