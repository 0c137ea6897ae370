"""Whole training runs: build the model, open the run folder, train, save model and tokenizer.

`train` and `distill` (lmpipe/runs/distillation.py) differ only in their objective and where the
model's params come from; everything else (run folder, logging, saving) is `run_training`, this
one code path. A `train` section with `pretrained` imports a model instead of training one (a real
teacher, e.g. SmolLM2).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from lmpipe.core.archs import arch_of, is_recurrent
from lmpipe.core.outputs import discard, publish, staged, staging_dir
from lmpipe.core.paths import WORLD
from lmpipe.core.run_folder import RunLog
from lmpipe.core.section import ConfigError
from lmpipe.data.batching import make_batches
from lmpipe.data.tokenizer import load_tokenizer
from lmpipe.data.tokens import TokenSplit
from lmpipe.eval.train_hook import accuracy_hook
from lmpipe.model.build import build_model, count_parameters, load_model, save_model
from lmpipe.model.card import write_model_card
from lmpipe.model.export import export_ternary
from lmpipe.model.params import ModelParams
from lmpipe.model.pretrained import import_pretrained
from lmpipe.model.rope import extend_context
from lmpipe.params.config import Params
from lmpipe.params.identity import data_identity, model_identity, run_identity
from lmpipe.train.checkpoint import fingerprint, latest_checkpoint, list_checkpoints
from lmpipe.train.distributed import init_distributed, shutdown
from lmpipe.train.divergence import Diverged
from lmpipe.train.loop import train
from lmpipe.train.losses import cross_entropy_objective, evaluate_loss
from lmpipe.train.mesh import consolidated_state_dict
from lmpipe.train.model_call import Objective
from lmpipe.train.params import TrainParams


def start_model(model_params: ModelParams, tp: TrainParams, tokenizer=None) -> torch.nn.Module:
    """A fresh model sized for `tokenizer`, or the saved one `tp.init_from` names, stretched to
    `model_params`'s context with its RoPE scaling when that is longer than the saved model's."""
    if tp.init_from is None:
        return build_model(model_params, tp.seed, tokenizer)
    model, _ = load_model(tp.init_from)
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"train.init_from = {tp.init_from}: its embedding has "
                          f"{model.config.vocab_size} rows, the tokenizer has {len(tokenizer)} tokens")
    made_as = arch_of(model.config.model_type)  # any other model type continues as llama
    if made_as != model_params.arch:
        raise ConfigError(f"train.init_from = {tp.init_from}: a {model.config.model_type} model, "
                          f"but the model section says arch {model_params.arch!r}")
    checked = (("hidden_size", model_params.d_model), ("num_hidden_layers", model_params.n_layers))
    if not is_recurrent(model_params.arch):
        checked += (("num_attention_heads", model_params.n_heads),)
    for key, mine in checked:
        if getattr(model.config, key) != mine:
            raise ConfigError(f"train.init_from = {tp.init_from}: its {key} is "
                              f"{getattr(model.config, key)}, the model section says {mine}")
    if is_recurrent(model_params.arch):  # no positions to stretch: a recurrent model has no RoPE
        return model.train()
    if model_params.max_seq_len != model.config.max_position_embeddings or \
            model_params.rope_scaling != "none":
        model = extend_context(model, model_params.max_seq_len, model_params.rope_scaling,
                               model_params.rope_factor)
    return model.train()


def _check_data_fits(train_key: str, model_key: str, model_params: ModelParams,
                     tp: TrainParams, train_split: TokenSplit, val_split: TokenSplit) -> None:
    """Refuse, before anything is built or written, data the run could not train on."""
    if tp.sampling == "windows":
        if train_split.n_tokens <= tp.block_size + 1:
            raise ConfigError(f"{train_key}.block_size = {tp.block_size}: the train split has only "
                              f"{train_split.n_tokens} tokens; expected block_size + 1 < "
                              f"{train_split.n_tokens}")
        return
    longest = int(max(train_split.lengths().max(initial=0), val_split.lengths().max(initial=0)))
    if longest > model_params.max_seq_len:
        raise ConfigError(f"{model_key}.max_seq_len = {model_params.max_seq_len}: the longest "
                          f"document has {longest} tokens; expected max_seq_len >= {longest} "
                          f"(or {train_key}.sampling: windows)")
    documents, rows = len(train_split.docs), tp.batch_size * tp.grad_accum
    if documents < rows:
        raise ConfigError(f"{train_key}.batch_size x grad_accum = {rows}: more than the "
                          f"{documents} training documents; expected at most {documents}")


def run_training(stage: str, name: str, params: Params, model_params: ModelParams,
                 tp: TrainParams, tokens_dir: Path, tokenizer_dir: Path, out: Path,
                 make_objective: Callable[[torch.nn.Module], Objective], section: dict,
                 teacher: str | None = None, inputs: dict | None = None,
                 keys: tuple[str, str] | None = None) -> dict:
    """Train one run into a staging folder and publish it over `out` when it has finished.

    `section`: the parameters that define this run; `inputs`: content hashes of what it reads
    beyond the tokens and tokenizer (a teacher, a cache): with the code, they make the run's
    identity, and a checkpoint resumes only a run of the same identity. `make_objective(model)`
    builds the objective (it may give the model extra trainable parts, which it removes again in
    `objective.detach(model)` before the model is saved). `teacher`: the model this one learns
    from, named in its model card. `keys`: the params keys of the train and model sections, for
    error messages."""
    train_key, model_key = keys or (f"{name}.train", f"{name}.model")
    tokenizer = load_tokenizer(tokenizer_dir)
    train_split = TokenSplit.open(tokens_dir, "train")
    val_split = TokenSplit.open(tokens_dir, "val")
    _check_data_fits(train_key, model_key, model_params, tp, train_split, val_split)
    asks_people = bool(tp.eval_people) and params.data.source == "people"
    identity_inputs = {**data_identity(tokens_dir, tokenizer_dir, WORLD if asks_people else None),
                       **(inputs or {})}
    if tp.init_from is not None:
        identity_inputs["init_from"] = model_identity(tp.init_from)
    identity = run_identity(section, identity_inputs)
    model = start_model(model_params, tp, tokenizer)
    objective = make_objective(model)
    dist = init_distributed()
    reason = getattr(objective, "single_process_only", None)
    if dist.enabled and reason:
        raise ConfigError(f"{stage}: {reason} is not supported under torchrun (data parallel)")
    work = staging_dir(out)
    if dist.is_main and latest_checkpoint(work / "checkpoints", fingerprint(identity)) is None:
        discard(work)  # nothing of this identity to resume: start from an empty folder
    dist.barrier()
    resolved = {"run": {"stage": stage, "name": name}, **params.model_dump(mode="json")}
    # Only rank 0 writes the run folder; the other data-parallel processes just train.
    run = RunLog(work, stage, name, resolved) if dist.is_main else None
    try:
        with run or contextlib.nullcontext():
            n_params = count_parameters(model) - sum(
                p.numel() for p in getattr(model, "distill_projectors", torch.nn.Module()).parameters())
            if dist.is_main:
                print(f"{stage} {name}: {n_params:,} parameters, {tp.steps} steps of "
                      f"{tp.batch_size * tp.grad_accum} {tp.sampling} on {dist.world} process(es)")
            hook = None
            if tp.eval_people and params.data.source != "people":
                # like eval.trained_people: a setting of the people world, idle on other data
                print(f"{name}.train.eval_people = {tp.eval_people} ignored: data.source = "
                      f"{params.data.source!r} has no people to ask")
            elif tp.eval_people:
                hook = accuracy_hook(WORLD / "people.duckdb", tokenizer, tp.eval_people, tp.seed,
                                     params.eval.max_new_tokens)
            summary = train(model, train_split, val_split, tp, run, tokenizer.pad_token_id,
                            objective=objective, desc=f"{stage} {name}", run_params=identity,
                            folder=work, eval_hook=hook)
            if hasattr(objective, "detach"):
                objective.detach(model)
            # on a mesh the model is in shards: gather it whole (every process takes part)
            whole = consolidated_state_dict(model) if tp.mesh is not None else None
            if run is not None:
                if tp.qat:  # what was trained is a ternary model: save it packed, as it runs
                    quantization = export_ternary(model, tokenizer, work / "model",
                                                  tp.qat_skip_modules)
                    summary = {**summary, "packed_ratio": quantization["ratio"],
                               "file_bytes": quantization["file_bytes"]}
                else:
                    save_model(model, tokenizer, work / "model", state_dict=whole)
                write_model_card(work / "model", name=name, stage=stage,
                                 params=params.model_dump(mode="json"),
                                 summary={"params_count": n_params, **summary}, teacher=teacher)
                run.finish(params_count=n_params, **summary)
    except ConfigError:
        # refused input: leave no trace unless there are checkpoints a corrected rerun may resume
        if dist.is_main and not list_checkpoints(work / "checkpoints"):
            discard(work)
        raise
    except Diverged as exc:
        if dist.is_main:
            print(f"{stage} {name}: {exc}; the run is kept in {work} (status diverged) and "
                  f"{out} is unchanged", file=sys.stderr)
        raise
    if dist.is_main:
        publish(work, out)
    dist.barrier()
    shutdown(dist)
    return summary


def import_teacher(name: str, params: Params, tokens_dir: Path, tokenizer_dir: Path,
                   out: Path) -> dict:
    """`<name>.pretrained`: import the model as this run's model and measure its val loss."""
    section = getattr(params, name)
    tokenizer = load_tokenizer(tokenizer_dir)
    resolved = {"run": {"stage": "train", "name": name}, **params.model_dump(mode="json")}
    with staged(out) as work, RunLog(work, "train", name, resolved) as run:
        model = import_pretrained(section.pretrained, tokenizer, work / "model")
        tp = section.train
        val = make_batches(TokenSplit.open(tokens_dir, "val"), tp.sampling, tp.batch_size,
                           tp.block_size, tp.seed, tokenizer.pad_token_id,
                           model.config.max_position_embeddings, tp.loss_on)
        val_loss = evaluate_loss(model, val, tp.batch_size, tp.eval_batches)
        run.log({"step": 0, "tokens": 0, "val_loss": val_loss})
        n_params = count_parameters(model)
        print(f"train {name}: imported {section.pretrained} ({n_params:,} parameters), "
              f"val loss {val_loss:.4f}")
        summary = {"initial_val_loss": val_loss, "final_val_loss": val_loss, "steps": 0,
                   "tokens_seen": 0, "pretrained": section.pretrained}
        write_model_card(work / "model", name=name, stage="train",
                         params=params.model_dump(mode="json"),
                         summary={"params_count": n_params, **summary},
                         base_model=section.pretrained)
        run.finish(params_count=n_params, **summary)
    return summary


def train_from_scratch(name: str, params: Params, tokens_dir: Path, tokenizer_dir: Path,
                       out: Path) -> dict:
    section = getattr(params, name)
    if section.pretrained:
        return import_teacher(name, params, tokens_dir, tokenizer_dir, out)
    return run_training("train", name, params, section.model, section.train, tokens_dir,
                        tokenizer_dir, out, lambda model: cross_entropy_objective,
                        section.model_dump(mode="json"))
