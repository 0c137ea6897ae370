"""Training on a (dp, tp) device mesh under torchrun (gloo, CPU): FSDP2 over dp and tensor
parallel over tp match one process with the same global batch; sharded (DCP) checkpoints resume
after SIGKILL and on another mesh shape; the model gathered whole gives the sharded one's logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmpipe.core import protocol
from lmpipe.data.tokenizer import build_byte_tokenizer
from lmpipe.train.params import TrainParams

DRIVER = Path(__file__).parents[1] / "drivers" / "train_tiny.py"
# four heads and a d_ff of 64 split over tp = 2 or 4; two blocks, so FSDP has units to shard
SHAPE = ["d_model=32", "n_layers=2", "n_heads=4", "d_ff=64"]
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")


def _train(tokens, run, steps, *extra, procs=1, check=True):
    launcher = (*TORCHRUN, f"--nproc_per_node={procs}") if procs > 1 else (sys.executable,)
    result = subprocess.run([*launcher, str(DRIVER), str(tokens), str(run), str(steps),
                             "--model", *SHAPE, *extra], capture_output=True, text=True,
                            check=False,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-4000:])
    return result


def _losses(run):
    """Every logged training and validation loss, by step."""
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").open()]
    return {(r["step"], k): r[k] for r in records for k in ("loss", "val_loss") if k in r}


def _summary(run):
    return json.loads((Path(run) / "summary.json").read_text())


def _assert_same_losses(a, b, tol=1e-5):
    la, lb = _losses(a), _losses(b)
    assert la.keys() == lb.keys() and len(la) >= 4
    for key in la:
        assert lb[key] == pytest.approx(la[key], abs=tol), key


@pytest.mark.slow
def test_a_killed_rank_resumes_from_the_sharded_checkpoint_on_any_mesh_shape(tiny_tokens,
                                                                            tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    common = ["--set", "checkpoint_every=5"]
    _train(tiny_tokens, straight, 30, *common)
    # rank 1 of a 2 x 2 mesh is killed (SIGKILL) at step 13, and torchrun stops the others
    died = _train(tiny_tokens, killed, 30, "--kill-at", "13", "--kill-rank", "1", *common,
                  "mesh=2x2", procs=4, check=False)
    assert died.returncode != 0
    checkpoints = killed / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step_")) == [
        "step_00000005", "step_00000010"]
    assert (checkpoints / "step_00000010" / "dcp").is_dir()
    # resumed on 1 x 4 (killed at step 18), on 4 x 1 (killed at step 23), then one process
    for mesh in ("1x4", "4x1"):
        died = _train(tiny_tokens, killed, 30, "--kill-at", "8", "--kill-rank", "3", *common,
                      f"mesh={mesh}", procs=4, check=False)
        assert died.returncode != 0
    _train(tiny_tokens, killed, 30, *common)
    assert _summary(killed)["resumed_from"] == 20
    la, lb = _losses(straight), _losses(killed)
    assert lb.keys() == la.keys()
    for key in la:
        assert lb[key] == pytest.approx(la[key], abs=1e-5), key


@pytest.mark.slow
def test_2x2_compiled_with_activation_checkpointing_trains_as_one_process_and_saves_whole(
        tiny_tokens, tmp_path):
    """The same losses as one eager process with the same global batch (activation checkpointing
    and compiled blocks on the mesh change no figure), each process holding its shards of the
    AdamW moments, and the model gathered whole giving the sharded model's logits."""
    from transformers import AutoModelForCausalLM

    single, run = tmp_path / "single", tmp_path / "2x2"
    # windows: one batch shape, so one compiled graph a block under tensor parallel
    common = ["batch_size=8", "log_every=1", "sampling=windows", "block_size=32"]
    _train(tiny_tokens, single, 6, "--set", *common)
    _train(tiny_tokens, run, 6, "--set", *common, "mesh=2x2", "grad_checkpointing=true",
           "compile=true", "--export", procs=4)
    _assert_same_losses(single, run)
    # each block's forward compiled: one graph for training, one for eval (no_grad), no more
    compiled = json.loads((run / "compiled.json").read_text())
    assert compiled["unique_graphs"] >= 2 and compiled["calls_captured"] > 0
    summary = _summary(run)
    assert (summary["world_size"], summary["mesh_dp"], summary["mesh_tp"]) == (4, 2, 2)
    assert summary["final_val_loss"] == pytest.approx(_summary(single)["final_val_loss"],
                                                      abs=1e-5)
    # AdamW keeps 8 bytes a parameter whole; a process holds a quarter of the blocks' moments
    # and half of the rest's, under 60% of that here
    whole = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    n_params = sum(p.numel() for p in whole.parameters())
    assert 0 < summary["optimizer_state_bytes"] < 0.6 * 8 * n_params
    saved = torch.load(run / "logits.pt", weights_only=True)
    with torch.no_grad():
        logits = whole(input_ids=saved["input_ids"]).logits
    assert torch.allclose(logits, saved["logits"], atol=1e-5)
    assert not any(isinstance(p, torch.distributed.tensor.DTensor) for p in whole.parameters())


def test_mesh_params_are_checked_before_anything_runs():
    from lmpipe.model.params import ModelParams
    from lmpipe.train.params import ModelRunParams

    with pytest.raises(ValueError, match="optimizer 'muon' is not supported on a device mesh"):
        TrainParams(optimizer="muon", mesh={"dp": 2, "tp": 2})
    with pytest.raises(ValueError, match="qat"):
        TrainParams(qat=True, mesh={"dp": 1, "tp": 2})
    with pytest.raises(ValueError, match=r"train.mesh.tp = 4 does not divide model.n_heads \(2\)"):
        ModelRunParams(model=ModelParams(d_model=32, n_heads=2),
                       train=TrainParams(mesh={"dp": 1, "tp": 4}))
    with pytest.raises(ValueError, match=r"does not divide model.d_ff \(65\)"):
        ModelRunParams(model=ModelParams(d_model=32, n_heads=4, d_ff=65),
                       train=TrainParams(mesh={"dp": 1, "tp": 2}))
    with pytest.raises(ValueError, match="expected model.arch llama"):
        ModelRunParams(model=ModelParams(arch="mamba"), train=TrainParams(mesh={"dp": 1, "tp": 2}))
    ModelRunParams(model=ModelParams(d_model=32, n_heads=4), train=TrainParams(mesh={"tp": 4}))
    from lmpipe.distill.params import DistillParams

    with pytest.raises(ValueError, match="distillation runs data parallel only"):
        DistillParams(train=TrainParams(mesh={"dp": 2}))


def test_the_checkpoint_fingerprint_leaves_the_mesh_out():
    from lmpipe.train.checkpoint import fingerprint

    plain = {"model": {"d_model": 32}, "train": TrainParams().model_dump(mode="json")}
    meshed = {"model": {"d_model": 32},
              "train": TrainParams(mesh={"dp": 2, "tp": 2}).model_dump(mode="json")}
    other = {"model": {"d_model": 32}, "train": TrainParams(lr=0.1).model_dump(mode="json")}
    assert fingerprint(plain) == fingerprint(meshed) != fingerprint(other)


@pytest.mark.slow
def test_generation_with_a_tool_call_under_tensor_parallel_writes_the_same_tokens(tmp_path):
    driver = Path(__file__).parents[1] / "drivers" / "generate_tp.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for out, launcher in ((tmp_path / "one.json", (sys.executable,)),
                          (tmp_path / "tp2.json", (*TORCHRUN, "--nproc_per_node=2"))):
        result = subprocess.run([*launcher, str(driver), str(out)], capture_output=True,
                                text=True, check=False, env=env)
        assert result.returncode == 0, result.stderr[-4000:]
    one, tp2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "tp2"))
    assert tp2 == one
    call = one[0]
    assert call["tool_calls"] == [["?", "1 result"]] and len(call["ids"]) > 24
    eos = build_byte_tokenizer().convert_tokens_to_ids(protocol.EOS)
    assert one[1] == {"ids": [eos], "tool_calls": [], "finish": "stop"}
    assert len(set(one[2]["ids"])) > 2   # the model's own text, not one token repeated


def test_the_stage_runner_starts_the_train_stage_under_torchrun_when_asked(tmp_path):
    """stages/run.sh with LMPIPE_TORCHRUN: the train stage (and only the stages named in
    LMPIPE_TORCHRUN_STAGES) goes through torch.distributed.run with those options."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    root = Path(__file__).resolve().parents[2]

    def argv(stage: str, **env: str) -> str:
        result = subprocess.run(["sh", str(root / "stages" / "run.sh"), stage, "teacher"],
                                capture_output=True, text=True, check=True,
                                env={"PATH": os.environ["PATH"], "LMPIPE_PYTHON": str(fake),
                                     **env})
        return result.stdout.strip()

    launch = "--nnodes 2 --rdzv-endpoint head:29500 --nproc_per_node 4"
    assert argv("train", LMPIPE_TORCHRUN=launch) == (
        f"-m torch.distributed.run {launch} -m stages.train teacher")
    assert argv("eval", LMPIPE_TORCHRUN=launch) == "-m stages.eval teacher"
    assert argv("distill", LMPIPE_TORCHRUN=launch, LMPIPE_TORCHRUN_STAGES="train distill") == (
        f"-m torch.distributed.run {launch} -m stages.distill teacher")
    assert argv("train") == "-m stages.train teacher"


def test_a_one_process_stage_started_by_torchrun_refuses_before_writing_anything(tmp_path):
    """Eval (and every stage but train and distill) would write its outputs from every process:
    under torchrun it exits 2 naming the stage and the launcher, and leaves the folder empty."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "stages.eval"], capture_output=True,
                            text=True, cwd=tmp_path, check=False,
                            env=dict(os.environ, PYTHONPATH=str(root), WORLD_SIZE="2", RANK="0"))
    assert result.returncode == 2
    assert ("lmpipe eval: error: the eval stage runs in one process, but torchrun started 2"
            in result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_the_pipeline_flow_passes_its_torchrun_options_to_the_stages(monkeypatch):
    monkeypatch.delenv("LMPIPE_TORCHRUN", raising=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pipeline_flow", Path(__file__).resolve().parents[2] / "flows" / "pipeline.py")
    flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow)
    assert flow.stage_env("--nproc_per_node 4")["LMPIPE_TORCHRUN"] == "--nproc_per_node 4"
    assert "LMPIPE_TORCHRUN" not in flow.stage_env(None)
    assert flow._parse_args(["--torchrun", "--nproc_per_node 2"]).torchrun == "--nproc_per_node 2"
