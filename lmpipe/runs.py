"""Whole training runs: build the model, open the run folder, train, save model and tokenizer.

`train` and `distill` differ only in their objective and where the model's params come from;
everything else (run folder, logging, saving) is this one code path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from lmpipe.config import ConfigError, ModelParams, Params, TrainParams
from lmpipe.context import extend_context
from lmpipe.distill import kd_objective
from lmpipe.distributed import init_distributed, shutdown
from lmpipe.losses import cross_entropy_objective
from lmpipe.model import build_model, count_parameters, load_model, save_model
from lmpipe.runlog import RunLog
from lmpipe.teacher_cache import TeacherCache, file_sha256
from lmpipe.tokenizer import load_tokenizer
from lmpipe.tokens import TokenSplit
from lmpipe.train import Objective, train


def start_model(model_params: ModelParams, tp: TrainParams, tokenizer=None) -> torch.nn.Module:
    """A fresh model sized for `tokenizer`, or the saved one `tp.init_from` names, stretched to
    `model_params`'s context with its RoPE scaling when that is longer than the saved model's."""
    if tp.init_from is None:
        return build_model(model_params, tp.seed, tokenizer)
    model, _ = load_model(tp.init_from)
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"train.init_from = {tp.init_from}: its embedding has "
                          f"{model.config.vocab_size} rows, the tokenizer has {len(tokenizer)} tokens")
    for key, mine in (("hidden_size", model_params.d_model),
                      ("num_hidden_layers", model_params.n_layers),
                      ("num_attention_heads", model_params.n_heads)):
        if getattr(model.config, key) != mine:
            raise ConfigError(f"train.init_from = {tp.init_from}: its {key} is "
                              f"{getattr(model.config, key)}, the model section says {mine}")
    if model_params.max_seq_len != model.config.max_position_embeddings or \
            model_params.rope_scaling != "none":
        model = extend_context(model, model_params.max_seq_len, model_params.rope_scaling,
                               model_params.rope_factor)
    return model.train()


def _run(stage: str, name: str, params: Params, model_params: ModelParams, tp: TrainParams,
         tokens_dir: Path, tokenizer_dir: Path, out: Path, objective: Objective,
         section: dict) -> dict:
    """`section`: the parameters that define this run; a checkpoint resumes only if they match."""
    tokenizer = load_tokenizer(tokenizer_dir)
    train_split = TokenSplit.open(tokens_dir, "train")
    val_split = TokenSplit.open(tokens_dir, "val")
    model = start_model(model_params, tp, tokenizer)
    dist = init_distributed()
    resolved = {"run": {"stage": stage, "name": name}, **params.model_dump(mode="json")}
    # Only rank 0 writes the run folder; the other data-parallel processes just train.
    run = RunLog(out, stage, name, resolved) if dist.is_main else None
    with run or contextlib.nullcontext():
        n_params = count_parameters(model)
        if dist.is_main:
            print(f"{stage} {name}: {n_params:,} parameters, {tp.steps} steps of "
                  f"{tp.batch_size * tp.grad_accum} {tp.sampling} on {dist.world} process(es)")
        summary = train(model, train_split, val_split, tp, run, tokenizer.pad_token_id,
                        objective=objective, desc=f"{stage} {name}", run_params=section,
                        folder=out)
        if run is not None:
            save_model(model, tokenizer, out / "model")
            run.finish(params_count=n_params, **summary)
    shutdown(dist)
    return summary


def train_from_scratch(name: str, params: Params, tokens_dir: Path, tokenizer_dir: Path,
                       out: Path) -> dict:
    section = getattr(params, name)
    return _run("train", name, params, section.model, section.train, tokens_dir, tokenizer_dir,
                out, cross_entropy_objective, section.model_dump(mode="json"))


def distill_from_cache(params: Params, tokens_dir: Path, tokenizer_dir: Path, cache_dir: Path,
                       out: Path) -> dict:
    """Train the student architecture against the teacher cache (`distill` section)."""
    cache = TeacherCache.open(cache_dir, expect={
        "tokenizer_sha256": file_sha256(Path(tokenizer_dir) / "tokenizer.json")})
    if cache.manifest["positions"] != TokenSplit.open(tokens_dir, "train").n_tokens:
        raise ValueError(f"{cache_dir}: cache covers {cache.manifest['positions']} positions, "
                         "the train split has a different count; rebuild the cache")
    d = params.distill
    return _run("distill", "distilled", params, params.student.model, d.train, tokens_dir,
                tokenizer_dir, out, kd_objective(cache, d.temperature, d.kd_weight),
                {"distill": d.model_dump(mode="json"),
                 "model": params.student.model.model_dump(mode="json"),
                 "cache": cache.manifest})
