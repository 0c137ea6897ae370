"""Hugging Face model cards: a `README.md` beside every saved model.

A card is YAML front matter (`library_name`, `tags`, `base_model`, and `model-index` results in the
Hub's schema) followed by markdown a person can read: what the model is and how big, which lmpipe
version and git commit made it, what it was trained on, how it scores, and the resolved params.
Everything comes from the saved `config.json` and weights' header, the params and the run summary,
so the card says only what was recorded. Training stages write a card with their own figures; the
eval stage writes fuller ones (with the teacher/student/distilled/quantized comparison) into its
own folder, since rewriting another stage's output would make DVC see that stage as changed.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from lmpipe.core.run_folder import git_state
from lmpipe.model.build import count_parameters, tensor_headers
from lmpipe.quant.packed_load import quantization_config_of
from lmpipe.quant.packing import BITNET, INT8, INT8_FILE, WEIGHTS_FILE

# `pretrained` shorthands -> the Hub id, so `base_model` links to the real model page.
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# distill.teacher -> where the student's targets came from, in words.
TEACHER_SOURCES = {"cache": "from the teacher_cache stage's top-k cache",
                   "live": "from the teacher model run on every batch"}

# Headline figures (lmpipe.eval.evaluate.headline keys) -> (table column, long name). The order is
# the column order of the comparison table and of the model-index metrics.
METRICS = {
    "val_loss": ("val loss", "validation loss (nats per token)"),
    "val_ppl": ("val ppl", "validation perplexity"),
    "val_bpb": ("val bpb", "validation bits per byte"),
    "recall_trained": ("recall (no tool)", "recall without the tool, trained people"),
    "tool_accuracy_trained": ("tool acc., trained", "accuracy with the tool, trained people"),
    "tool_accuracy_heldout": ("tool acc., held-out", "accuracy with the tool, held-out people"),
    "tool_call_rate_trained": ("valid calls, trained", "valid tool-call rate, trained people"),
    "tool_call_rate_heldout": ("valid calls, held-out", "valid tool-call rate, held-out people"),
    "tool_call_wrong_person_heldout": ("wrong-person calls, held-out",
                                       "tool calls naming another person, held-out people"),
    "tool_call_wrong_attribute_heldout": ("wrong-attribute calls, held-out",
                                          "tool calls asking another attribute, held-out people"),
    "knowledge_bits_trained": ("knowledge bits", "knowledge stored in the weights (bits)"),
    "bits_per_param_trained": ("bits/param", "knowledge bits per parameter"),
}


def _architecture(model_dir: Path) -> torch.nn.Module:
    """The saved model's architecture on the meta device: every shape, no memory, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    if hasattr(config, "quantization_config"):  # the layers as config.json describes them
        del config.quantization_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _quantized(model_dir: Path, model: torch.nn.Module) -> dict[str, Any] | None:
    """Of a quantized directory: its kind ("ternary" or "int8"), quantized layer names and
    quantized weight count, read from the weights it stores; None for a float model.

    Counted from the architecture's shapes, not from the stored tensors: packed ternary rows are
    padded to a multiple of 4 (a 265-row head stores 67 x 4 rows)."""
    qc = quantization_config_of(model_dir)
    if qc is None:
        return None
    weights = model_dir / (INT8_FILE if qc["quant_method"] == INT8 else WEIGHTS_FILE)
    layers = sorted(k.removesuffix(".weight_scale") for k in tensor_headers(weights)
                    if k.endswith(".weight_scale"))
    linears = [model.get_submodule(name) for name in layers]
    return {"kind": "int8" if qc["quant_method"] == INT8 else "ternary", "layers": layers,
            "weights": sum(m.weight.numel() for m in linears),
            # transformers' BitLinear holds out_features // 4 packed rows
            "unloadable": [n for n, m in zip(layers, linears) if m.out_features % 4]
            if qc["quant_method"] == BITNET else []}


def _dataset(params: dict[str, Any]) -> tuple[dict[str, str], str]:
    """(model-index dataset entry, a paragraph describing the training data)."""
    data, world, tok = params.get("data", {}), params.get("world", {}), params.get("tokenize", {})
    source = data.get("source", "people")
    if source == "people":
        kinds = [k for k, on in (("tool dialogs (the model writes a database query and copies "
                                  "the reply)", world.get("tool_dialogs")),
                                 ("question/answer dialogs (answered from memory)",
                                  world.get("qa_dialogs")),
                                 (f"biographies ({world.get('bios_per_person')} per person)",
                                  world.get("bios_per_person"))) if on]
        text = (f"lmpipe's synthetic people world (seed {world.get('seed')}): "
                f"{world.get('people')} trained people, each with six attributes, appear in "
                f"{'; '.join(kinds) or 'no documents'}. {world.get('heldout_people')} held-out "
                "people exist only in the database, so questions about them can only be answered "
                "with the tool.")
        entry = {"name": f"lmpipe people world (seed {world.get('seed')}, {world.get('people')} "
                         f"trained + {world.get('heldout_people')} held-out people)",
                 "type": "lmpipe/people-world"}
    elif source == "shakespeare":
        where = f"the local copy {data['path']}" if data.get("path") else "the standard download"
        text = f"Tiny Shakespeare (about 1 MB of plays), from {where}."
        entry = {"name": "tiny Shakespeare", "type": "tiny_shakespeare"}
    else:
        text = (f"The local corpus `{data.get('path')}` ({data.get('format')}"
                + (f", field `{data.get('field')}`" if data.get("format") != "text" else "") + ").")
        entry = {"name": f"corpus {Path(str(data.get('path'))).name}", "type": "lmpipe/corpus"}
    if data.get("max_documents"):
        text += f" Only the first {data['max_documents']} documents were kept."
    targets = ("assistant tokens (plain-text documents whole)"
               if tok.get("loss_on") == "assistant" else "every token")
    text += (f" Tokenizer: `{tok.get('kind', 'byte')}`; the loss is taken on {targets}, with "
             f"{100 * float(tok.get('val_fraction', 0)):g}% of the documents held out for "
             "validation.")
    return entry, text


def _training(name: str, stage: str, params: dict[str, Any], summary: dict[str, Any],
              base: str | None) -> tuple[str, str]:
    """(one-sentence introduction, how it was trained)."""
    if stage == "quantize":
        q = params.get("quantize", {})
        skipped = ", ".join(q.get("skip_modules", [])) or "none"
        if name == "int8":
            return (f"`{name}` is an int8 weight-only quantization of `{base}` (the baseline).",
                    f"Every linear layer except {skipped}: per-output-channel absmax int8 weights "
                    f"with float32 scales, stored compactly in `{INT8_FILE}` "
                    f"(`quant_method: {INT8}`, which lmpipe loads and measures). transformers has "
                    "no such format, so `model.safetensors` holds the same weights dequantized to "
                    "float32 (int8 code × scale): an ordinary float model with identical outputs. "
                    "No training after quantization.")
        qat = q.get("method") == "qat" and name == "quantized"
        kind = "quantization-aware fine-tuning" if qat else "post-training quantization"
        tp = q.get("train", {})
        how = (f"{tp.get('steps')} steps through ternary weights and 8-bit activations "
               f"(straight-through gradients, lambda warm-up over {tp.get('qat_warmup_steps')} "
               "steps) with the distill objective, from the distilled student." if qat
               else "No training after quantization.")
        return (f"`{name}` is a BitNet b1.58 ternary {kind} of `{base}`.",
                f"Every linear layer except {skipped} holds ternary weights with a per-tensor "
                "absmean scale, packed 2 bits a weight in transformers' BitNet layout "
                f"(`quant_method: bitnet`); activations are quantized per token to 8 bits. {how}")
    pretrained = summary.get("pretrained") or params.get(name, {}).get("pretrained")
    if pretrained:
        return (f"`{name}` is the pretrained model `{pretrained}`, imported by lmpipe's "
                f"`train@{name}` stage (its embedding grown to lmpipe's protocol tokens).",
                "Not trained here: its validation loss was measured on the data below.")
    tp = params.get("distill" if stage == "distill" else name, {}).get("train", {})
    how = (f"{tp.get('steps')} steps of {tp.get('batch_size')} × {tp.get('grad_accum')} "
           f"{tp.get('sampling')}, {tp.get('optimizer')} at lr {tp.get('lr')} ({tp.get('schedule')}"
           f" schedule, {tp.get('warmup_steps')} warmup steps), seed {tp.get('seed')}.")
    if stage == "distill":
        d = params.get("distill", {})
        objective = " + ".join(f"{w}·{t}" for t, w in d.get("objective", {}).items() if w)
        return (f"`{name}` is lmpipe's student architecture distilled from the teacher `{base}` "
                "by the `distill` stage.",
                f"Objective {objective} at temperature {d.get('temperature')}, the teacher's "
                f"signals read {TEACHER_SOURCES.get(d.get('teacher'), d.get('teacher'))}; " + how)
    return (f"`{name}` is a small Llama-style causal language model trained from scratch by "
            f"lmpipe's `{stage}@{name}` stage.", how)


def _figures(summary: dict[str, Any], quantized: dict[str, Any] | None) -> str:
    """The training run's own figures and the quantized weights' counts, one line. The counts come
    from the saved weights, not the summary, so the card cannot name the wrong kind or number."""
    def run(*keys: tuple[str, str, str]) -> list[str]:
        return [f"{label} {summary[k]:{fmt}}" for k, label, fmt in keys
                if isinstance(summary.get(k), (int, float))]

    parts = run(("steps", "steps", ","), ("tokens_seen", "tokens seen", ","),
                ("initial_val_loss", "initial val loss", ".4g"),
                ("final_val_loss", "final val loss", ".4g"))
    if quantized:
        parts += [f"quantized linear layers {len(quantized['layers']):,}",
                  f"{quantized['kind']} weights {quantized['weights']:,}"]
    parts += run(("wall_time_s", "wall time (s)", ".1f"))
    return ("Run figures: " + ", ".join(parts) + ".") if parts else ""


def _loading(model_dir: Path, quantized: dict[str, Any] | None) -> list[str]:
    """How transformers loads this directory, for the usage section."""
    if quantized is None:
        return []
    if quantized["kind"] == "int8":
        return [f"transformers loads the dequantized float32 weights of `model.safetensors`; "
                f"`lmpipe.model.build.load_model` loads the compact `{INT8_FILE}` "
                "(same outputs).", ""]
    if quantized["unloadable"]:
        return [f"transformers cannot load this directory: its BitLinear needs out_features "
                f"divisible by 4, which {', '.join(quantized['unloadable'])} is not, and it "
                "raises a size-mismatch error. Load it with lmpipe: "
                f'`lmpipe.model.build.load_model("{model_dir}")`.', ""]
    return ["transformers loads the packed weights with its BitNet integration (needs "
            "`accelerate`); `lmpipe.model.build.load_model` computes the same logits without "
            "torch.compile.", ""]


def _inner_width(config: dict[str, Any]) -> int | None:
    """Mamba's inner width or an MLP's (config.json's intermediate_size); Mamba-2's config.json
    has none, only its factor `expand`."""
    if config.get("model_type") == "mamba2":
        return config.get("expand", 0) * config.get("hidden_size", 0) or None
    return config.get("intermediate_size")


def _table(comparison: dict[str, dict[str, float]], this: str) -> str:
    """Markdown table, one row per model, columns for the headline figures any model has."""
    keys = [k for k in ("parameters", *METRICS) if any(k in r for r in comparison.values())]
    header = ["model", *(METRICS[k][0] if k in METRICS else "params" for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(keys)]
    for model, row in comparison.items():
        cells = ["" if k not in row else f"{int(row[k]):,}" if k == "parameters" else
                 f"{row[k]:.4g}" for k in keys]
        label = f"**{model}** (this model)" if model == this else model
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def write_model_card(model_dir: str | Path, *, name: str, stage: str, params: dict[str, Any],
                     summary: dict[str, Any] | None = None, base_model: str | None = None,
                     teacher: str | None = None,
                     comparison: dict[str, dict[str, float]] | None = None,
                     out: str | Path | None = None) -> Path:
    """Write the model card of the model saved in `model_dir`; returns its path.

    `name` is the model's name in lmpipe (teacher, student, distilled, quantized) and its row in
    `comparison` (eval headline figures per model, as `metrics/eval.json`). `params` is the
    resolved `Params.model_dump(mode="json")`; `summary` the run's summary. `base_model` is what
    this model was made from (defaults to `teacher`, for a distilled model). `out` (default
    `model_dir/README.md`) lets a later stage write a card without touching the model directory.
    """
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir / "README.md"
    summary = summary or {}
    base = base_model or teacher
    config = json.loads((model_dir / "config.json").read_text())
    architecture = _architecture(model_dir)
    n_params = count_parameters(architecture)  # tied embeddings once, as count_parameters
    quantized = _quantized(model_dir, architecture)
    dataset, data_text = _dataset(params)
    intro, training = _training(name, stage, params, summary, base)

    metrics = [{"type": k, "value": float(v), "name": METRICS[k][1]}
               for k in METRICS if (v := (comparison or {}).get(name, {}).get(k)) is not None]
    if isinstance(summary.get("final_val_loss"), (int, float)):
        metrics.append({"type": "final_val_loss", "value": float(summary["final_val_loss"]),
                        "name": "final validation loss of the training run"})
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                            "tags": ["lmpipe", stage, config.get("model_type", "llama")]}
    if base:
        meta["base_model"] = HUB_IDS.get(base, base)
        if stage == "quantize":
            meta["base_model_relation"] = "quantized"
    if metrics:  # the Hub rejects a model-index without results; a fresh quantized model has none
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": dataset, "metrics": metrics}]}]

    figures = _figures(summary, quantized)
    git = git_state()
    commit = (f"`{git['git_commit']}`" + (" (with uncommitted changes)" if git["git_dirty"] else "")
              if git["git_commit"] else "unknown (not made inside a git checkout)")
    heads = config.get("num_attention_heads")
    facts = [("stage", f"`{stage}`"),
             ("architecture", ", ".join(config.get("architectures") or [config.get("model_type")])),
             ("parameters", f"{int(n_params):,}" if n_params else "unknown"),
             ("layers", config.get("num_hidden_layers")),
             ("width (hidden size)", config.get("hidden_size")),
             # a recurrent model (mamba, mamba2, hawk) has no attention heads and no context limit
             ("attention heads", f"{heads} ({config.get('num_key_value_heads', heads)} key/value)"
              if config.get("model_type") != "recurrent_gemma" and heads else None),
             ("SSM heads", f"{config.get('num_heads')} of {config.get('head_dim')} channels"
              if config.get("model_type") == "mamba2" else None),
             ("inner width" if config.get("model_type") in ("mamba", "mamba2") else "MLP width",
              _inner_width(config)),
             ("vocabulary", f"{config.get('vocab_size')} tokens"),
             ("context", f"{config.get('max_position_embeddings')} tokens"
              if config.get("max_position_embeddings") else None),
             ("tied embeddings", "yes" if config.get("tie_word_embeddings") else "no"),
             ("lmpipe", importlib.metadata.version("lmpipe")),
             ("git commit", commit)]
    if base:
        facts.insert(1, ("made from", f"`{base}`"))
    body = [f"# {name}", "", intro, "", "| | |", "|---|---|",
            *(f"| {k} | {v} |" for k, v in facts if v is not None), "",
            "## Training data", "",
            ("Its source model's data: " if stage == "quantize" else "") + data_text, "",
            "## Training", "", training, *(["", figures] if figures else []), ""]
    if comparison:
        asked = any(k.startswith(("recall", "tool")) for row in comparison.values() for k in row)
        body += ["## Evaluation", "",
                 "All models scored by lmpipe's `eval` stage on the same validation batches"
                 + (" and the same questions (exact-match answers)" if asked else "") + ":", "",
                 _table(comparison, name), ""]
    body += ["## Usage", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'model = AutoModelForCausalLM.from_pretrained("{model_dir}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{model_dir}")', "```", "",
             *_loading(model_dir, quantized),
             "Prompts follow lmpipe's dialog and tool protocol (`lmpipe/core/protocol.py`); "
             "`lmpipe.eval.generate.answer_questions` runs the tool loop. A research model from a "
             "small experiment: not meant for any use beyond it.", "",
             "## Parameters", "", "The resolved `params.yaml` of the run:", "", "```yaml",
             yaml.safe_dump(params, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"---\n{front}---\n\n" + "\n".join(body), encoding="utf-8")
    return out
