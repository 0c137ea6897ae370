"""The training loop shared by the `train` and `distill` stages.

One loop, a pluggable objective: `train` minimises cross-entropy on target tokens, `distill` adds a
KL term against the teacher cache. Everything the loop logs goes to the run folder's metrics.jsonl.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmpipe.batching import Batch, LengthGroupedBatches
from lmpipe.config import TrainParams
from lmpipe.runlog import RunLog
from lmpipe.schedule import lr_at
from lmpipe.tokens import TokenSplit

Objective = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def masked_cross_entropy(logits: torch.Tensor, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of next-token predictions on target positions only."""
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        batch.input_ids[:, 1:].reshape(-1),
        reduction="none",
    ).view_as(batch.target_mask)
    total = (per_token * batch.target_mask).sum()
    return total / batch.target_mask.sum().clamp(min=1) if reduction == "mean" else total


def cross_entropy_objective(model: torch.nn.Module, batch: Batch):
    logits = model(input_ids=batch.input_ids).logits
    return masked_cross_entropy(logits, batch), {}


def make_optimizer(model: torch.nn.Module, tp: TrainParams) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices of linear layers, not on norms or embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and "embed" not in name and "lm_head" not in name
        (decay if is_matrix else no_decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tp.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tp.lr, betas=(tp.beta1, tp.beta2),
    )


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, split: TokenSplit, pad_id: int,
                  batch_size: int = 64) -> float:
    """Mean cross-entropy per target token over a whole split."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in LengthGroupedBatches(split, batch_size, 0, pad_id).sequential(batch_size):
        logits = model(input_ids=batch.input_ids).logits
        total += masked_cross_entropy(logits, batch, reduction="sum").item()
        count += batch.n_targets
    model.train(was_training)
    return total / max(count, 1)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    except OSError:
        from lmpipe.runlog import peak_rss_mb
        return peak_rss_mb()


def train(model: torch.nn.Module, train_split: TokenSplit, val_split: TokenSplit, tp: TrainParams,
          run: RunLog, pad_id: int, objective: Objective = cross_entropy_objective,
          desc: str = "train") -> dict[str, float]:
    """Run `tp.steps` optimizer steps; return the summary figures (also logged to `run`)."""
    if tp.threads:
        torch.set_num_threads(tp.threads)
    torch.manual_seed(tp.seed)
    max_len = getattr(model.config, "max_position_embeddings", None)
    batches = LengthGroupedBatches(train_split, tp.batch_size, tp.seed, pad_id, max_len)
    optimizer = make_optimizer(model, tp)
    model.train()
    initial_val = evaluate_loss(model, val_split, pad_id)
    run.log({"step": 0, "tokens": 0, "val_loss": initial_val})
    tokens_seen, window_loss, window_steps, window_tokens, window_time = 0, 0.0, 0, 0, 0.0
    window_extras: dict[str, float] = {}
    val_loss = initial_val
    progress = tqdm(range(tp.steps), desc=desc, unit="step", mininterval=2.0)
    for step in progress:
        t0 = time.perf_counter()
        lr = lr_at(step, tp.lr, tp.warmup_steps, tp.steps, tp.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batches(step)
        loss, extras = objective(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), tp.grad_clip if tp.grad_clip > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        n_tokens = int((batch.positions >= 0).sum())
        tokens_seen += n_tokens
        window_loss += loss.item()
        window_steps += 1
        window_tokens += n_tokens
        window_time += time.perf_counter() - t0
        for key, value in extras.items():
            window_extras[key] = window_extras.get(key, 0.0) + float(value)
        last = step + 1 == tp.steps
        if (step + 1) % tp.log_every == 0 or last:
            record = {
                "step": step + 1, "tokens": tokens_seen, "loss": window_loss / window_steps,
                "lr": lr, "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens / window_time, "step_time_s": window_time / window_steps,
                "rss_mb": _rss_mb(),
                **{k: v / window_steps for k, v in window_extras.items()},
            }
            if (step + 1) % tp.eval_every == 0 or last:
                val_loss = evaluate_loss(model, val_split, pad_id)
                record["val_loss"] = val_loss
            run.log(record)
            progress.set_postfix(loss=f"{record['loss']:.3f}", val=f"{val_loss:.3f}")
            window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
            window_extras = {}
    return {"initial_val_loss": initial_val, "final_val_loss": val_loss,
            "final_train_loss": record["loss"], "tokens_seen": tokens_seen, "steps": tp.steps}
