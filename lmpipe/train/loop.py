"""The training loop shared by the `train` and `distill` stages.

One loop, a pluggable objective: `train` minimises cross-entropy on target tokens, `distill` a
weighted sum of divergences from the teacher (lmpipe/distill/). The loop resumes from the run's
last checkpoint (lmpipe/train/run_checkpoints.py), runs data-parallel under `torchrun` or on a
device mesh (lmpipe/train/model_call.py wraps and compiles the model), accumulates gradients, stops
on a non-finite loss (lmpipe/train/divergence.py), and logs every `log_every` steps to the run
folder's metrics.jsonl: loss, lr, grad norm, tokens/s, time per phase, MFU and memory.

Validation runs on its own schedule, every `eval_every` steps and after the last, whatever
`log_every` is: on a step that is also a log step its figures join that step's record; on any
other it logs a record of its own (step, tokens, val_loss, eval memory, the eval hook's figures)
and leaves the training window running, so the log records are the same with or without it.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmpipe.core import profiler
from lmpipe.core.allocator import keep_freed_memory
from lmpipe.core.progress import progress
from lmpipe.core.run_folder import RunLog
from lmpipe.core.section import ConfigError
from lmpipe.data.batching import make_batches
from lmpipe.data.tokens import TokenSplit
from lmpipe.model.mamba import parallel_scans
from lmpipe.quant.bitlinear import convert_to_bitlinear, qat_lambda, set_lambda
from lmpipe.train.checkpoint import fingerprint
from lmpipe.train.cpu_linear import available, use_onednn_linears, use_torch_linears
from lmpipe.train.distributed import init_distributed, micro_batches, resolve_device
from lmpipe.train.divergence import check_finite
from lmpipe.train.log_window import LogWindow
from lmpipe.train.losses import cross_entropy_objective, evaluate_loss
from lmpipe.train.mesh import build_mesh, clip_grad_norm, parallelize
from lmpipe.train.model_call import (
    Objective,
    gradient_sync,
    step_loss_function,
    wrap_for_data_parallel,
)
from lmpipe.train.optim import build_optimizer, set_learning_rate, state_bytes
from lmpipe.train.params import TrainParams
from lmpipe.train.precision import autocast, loss_scaler
from lmpipe.train.probes import ProbeRecorder
from lmpipe.train.run_checkpoints import RunCheckpoints
from lmpipe.train.schedule import lr_at
from lmpipe.train.tracking import make_tracker


class Trainer:
    """Owns the model, optimizer and run folder of one training run."""

    def __init__(self, model: torch.nn.Module, train_split: TokenSplit, val_split: TokenSplit,
                 tp: TrainParams, run: RunLog | None, pad_id: int,
                 objective: Objective = cross_entropy_objective, desc: str = "train",
                 run_params: dict[str, Any] | None = None, folder: Path | None = None,
                 eval_hook: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> None:
        """`folder`: the run folder (default `run.folder`); every data-parallel process reads
        checkpoints from it, only rank 0 (the one holding `run`) writes. `eval_hook(model)`:
        extra figures logged at every eval step (lmpipe/eval/train_hook.py)."""
        if tp.probes.enabled and tp.compile:
            raise ConfigError("train.probes needs train.compile: false (hooks break the graph)")
        self.eval_hook = eval_hook
        if tp.threads:
            torch.set_num_threads(tp.threads)
        self.tp, self.run, self.desc, self.objective = tp, run, desc, objective
        # metrics the objective reports once per step (a cosine, a confidence), not per target
        self.per_step_metrics = set(getattr(objective, "per_step_metrics", ()))
        self.folder = folder if folder is not None else (run.folder if run is not None else None)
        self.dist = init_distributed()
        self.device = resolve_device(tp.device, self.dist)
        self.mesh = None
        if tp.mesh is not None:
            self.mesh, self.dist = build_mesh(tp.mesh, self.dist, self.device)
        if tp.batch_size < self.dist.data_world:
            # every replica must get at least one row of every micro-batch
            raise ConfigError(f"train.batch_size = {tp.batch_size}: fewer rows than the "
                              f"{self.dist.data_world} data-parallel processes; expected "
                              f"batch_size >= {self.dist.data_world}")
        if tp.qat:  # before the optimizer and DDP see the model: same parameters, new forward
            convert_to_bitlinear(model, tp.qat_skip_modules)
        self.model = model.to(self.device)
        parallel_scans(model)  # a Mamba's backward through the sequential scan is ~4x slower
        if tp.grad_checkpointing:
            model.activation_checkpointing_enable()
        max_len = getattr(model.config, "max_position_embeddings", None)
        self.batches = make_batches(train_split, tp.sampling, tp.batch_size * tp.grad_accum,
                                    tp.block_size, tp.seed, pad_id, max_len, tp.loss_on,
                                    tp.attention)
        self.val_batches = make_batches(val_split, tp.sampling, tp.batch_size, tp.block_size,
                                        tp.seed, pad_id, max_len, tp.loss_on, tp.attention)
        if tp.optimizer == "adalomo" and self.dist.enabled:
            raise ConfigError("train.optimizer = adalomo: it updates each weight during backward, "
                              "so data-parallel processes cannot average gradients first; run "
                              "one process or use another optimizer")
        if self.mesh is not None:  # split and shard before the optimizer sees the parameters
            parallelize(model, self.mesh, tp.mesh, compile_blocks=tp.compile)
        if self.device.type == "cpu":  # the stages do this too; here for library use and benches
            keep_freed_memory()
        self.optimizer = build_optimizer(model, tp)
        self.scaler = loss_scaler(self.device, tp.precision)
        self.fingerprint = fingerprint(run_params or tp.model_dump(mode="json"))
        self.run_params = run_params or {}
        self.checkpoints = RunCheckpoints(
            None if self.folder is None else self.folder / "checkpoints", self.fingerprint,
            self.run_params, tp.keep_checkpoints, self.mesh is not None, self.dist)
        self.step, self.tokens_seen = 0, 0
        self.initial_val = float("nan")
        on_mesh = self.mesh is not None
        self.wrapped = wrap_for_data_parallel(model, self.dist, self.device, on_mesh)
        self.step_loss = step_loss_function(self.wrapped, objective, tp, self.dist, on_mesh)
        # no recorder at all when probes are off: the loop then runs exactly as without them
        self.probes = (ProbeRecorder(model, tp.probes, self.folder if self.dist.is_main else None)
                       if tp.probes.enabled else None)
        self.tracker = make_tracker(tp.wandb, tp.wandb_project, desc,
                                    run.folder if run is not None and self.dist.is_main else None,
                                    self.run_params)
        # oneDNN's fp32 GEMM for the plain linears (lmpipe/train/cpu_linear.py), last, so a
        # constructor that raises leaves the model as it came; fit() undoes it when it ends. The
        # class swap keeps every module, parameter and hook the lines above took hold of
        self.onednn_linears = (
            tp.cpu_linear == "onednn" and self.device.type == "cpu" and tp.precision == "fp32"
            and not tp.compile and self.mesh is None and available()
            and use_onednn_linears(model) > 0)

    # -- checkpoints ---------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from this run's newest matching checkpoint; False when starting fresh."""
        state = self.checkpoints.resume(self.model, self.optimizer)
        if state is None:
            return False
        self.step, self.tokens_seen = state.step, state.tokens_seen
        self.initial_val = state.initial_val_loss
        return True

    def save(self) -> None:
        """Checkpoint the current step (lmpipe/train/run_checkpoints.py decides who writes)."""
        self.checkpoints.save(self.model, self.optimizer, self.step, self.tokens_seen,
                              self.initial_val)

    # -- evaluation ----------------------------------------------------------------------------
    def validation_loss(self) -> tuple[float, dict[str, float]]:
        """Validation loss, and the process memory before/during/after the eval round."""
        with profiler.eval_round() as memory:
            loss = evaluate_loss(self.model, self.val_batches, self.tp.batch_size,
                                 self.tp.eval_batches)
        return loss, memory

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self, step: int) -> tuple:
        """One optimizer step over the global batch; returns the sums the log window needs."""
        tp, timer = self.tp, self.timer
        with timer.phase("data"):
            micro = [b.to(self.device) for b in micro_batches(self.batches, tp, step, self.dist)]
            # one all-reduce for both counts: targets normalize the loss, tokens feed tokens/s
            counts = self.dist.data_sum(torch.tensor(
                [float(sum(b.target_mask.sum() for b in micro)), float(sum(b.n_tokens for b in micro))],
                device=self.device))
            global_targets, n_tokens = counts[0].clamp(min=1), int(counts[1])
        lr = lr_at(step, tp.lr, tp.warmup_steps, tp.steps, tp.min_lr_ratio, shape=tp.schedule)
        set_learning_rate(self.optimizer, lr)
        if tp.qat:
            set_lambda(self.model, qat_lambda(step, tp.qat_warmup_steps, tp.qat_schedule))
        total = torch.zeros((), device=self.device)
        extras: dict[str, torch.Tensor] = {}
        fused = hasattr(self.optimizer, "fused_step")  # AdaLomo: the update runs in backward
        with timer.phase("forward_backward"):
            for i, batch in enumerate(micro):
                sync = not self.dist.enabled or i == len(micro) - 1
                with (gradient_sync(sync, self.model, self.wrapped, tp, self.dist,
                                    self.mesh is not None),
                      autocast(self.device, tp.precision)):
                    loss_sum, parts = self.step_loss(batch)
                # DDP and FSDP average gradients over replicas; scaling by their number / global
                # targets makes the result the gradient of the global per-target mean.
                scaled = loss_sum * (self.dist.data_world / global_targets)
                if fused:  # a non-finite loss must stop the run before it touches the weights
                    check_finite(step + 1, loss_sum.detach(), torch.zeros(()), self.dist)
                    grad_norm = self.optimizer.fused_step(scaled, lr, tp.grad_clip)
                else:
                    self.scaler.scale(scaled).backward()
                total += loss_sum.detach()
                for key, value in parts.items():
                    # per-step diagnostics are averaged over micro-batches, the rest summed
                    share = len(micro) if key in self.per_step_metrics else 1
                    extras[key] = extras.get(key, 0) + value.detach() / share
        if fused:
            check_finite(step + 1, total, grad_norm, self.dist)
            return total, global_targets, extras, n_tokens, lr, grad_norm
        with timer.phase("optimizer"):
            self.scaler.unscale_(self.optimizer)
            clip = clip_grad_norm if self.mesh is not None else torch.nn.utils.clip_grad_norm_
            grad_norm = clip(list(self.model.parameters()),
                             tp.grad_clip if tp.grad_clip > 0 else math.inf)
            if not self.scaler.is_enabled():  # fp16 loss scaling skips non-finite steps itself
                check_finite(step + 1, total, grad_norm, self.dist)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return total, global_targets, extras, n_tokens, lr, grad_norm

    def fit(self) -> dict[str, float]:
        """Resume or start, then train to `steps`; each step trains, then logs, evaluates and
        checkpoints when they are due. Returns the run's summary figures."""
        try:
            return self._fit()
        finally:
            if self.onednn_linears:
                use_torch_linears(self.model)

    def _fit(self) -> dict[str, float]:
        tp = self.tp
        resumed, resumed_from = self._begin()
        flops_token, peak, trace = self._instrument()
        self._evaluate_start(resumed, flops_token, peak)
        # Everything allocated so far lives for the whole run: keep it out of every later
        # collection (a full gc.collect() over a loaded transformers costs ~0.3 s here).
        gc.freeze()
        val_loss, val_step = self.initial_val, self.step if not resumed else None
        window = self._window()
        bar = progress(range(self.step, tp.steps), desc=self.desc, unit="step",
                       disable=not self.dist.is_main, initial=self.step, total=tp.steps)
        record: dict[str, Any] = {}
        for step in bar:
            trace.step(step)
            lr, grad_norm = self._train_and_accumulate(step, window)
            last = self.step == tp.steps
            log_due = self.step % tp.log_every == 0 or last
            eval_due = self.step % tp.eval_every == 0 or last
            if log_due:
                record = self._window_record(step, window, lr, grad_norm, flops_token, peak)
            if eval_due:
                val_loss = self._evaluate_now(record if log_due else None, bar)
                val_step = self.step
            if log_due:
                self._log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{val_loss:.3f}",
                                tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False)
                window = self._window()
            if (tp.checkpoint_every and self.step % tp.checkpoint_every == 0) or last:
                self.save()
        trace.close()
        gc.unfreeze()
        if hasattr(self.optimizer, "remove_hooks"):  # AdaLomo's: the model outlives the run
            self.optimizer.remove_hooks()
        if val_step != self.step:  # resumed at the last step: measure the model as it ends
            val_loss, _ = self.validation_loss()
        if self.tracker is not None:
            self.tracker.close()
        return {"initial_val_loss": self.initial_val, "final_val_loss": val_loss,
                "final_train_loss": record.get("loss", float("nan")),
                "tokens_seen": self.tokens_seen, "steps": tp.steps, "resumed": resumed,
                "resumed_from": resumed_from,
                "optimizer_state_bytes": state_bytes(self.optimizer),
                "world_size": self.dist.world,
                **({"mesh_dp": self.tp.mesh.dp, "mesh_tp": self.tp.mesh.tp}
                   if self.tp.mesh is not None else {})}

    def _begin(self) -> tuple[bool, int | None]:
        """Resume from the newest matching checkpoint, or start over: the run's logs are cut
        back to the step it starts from and a fresh start clears stale checkpoints."""
        resumed = self.resume()
        resumed_from = self.step if resumed else None
        self.dist.barrier()  # every process has decided before rank 0 clears stale checkpoints
        if self.run is not None and self.dist.is_main:
            self.run.rewind(self.step)
            if self.probes is not None:
                self.probes.rewind(self.step)
            if not resumed:
                self.checkpoints.clear()
        return resumed, resumed_from

    def _instrument(self) -> tuple[float, float, Any]:
        """The phase timer, the FLOPs per token and matmul peak behind MFU, the profiler trace."""
        tp = self.tp
        self.timer = profiler.PhaseTimer()
        seq_len = (tp.block_size if tp.sampling == "windows"
                   else int(self.batches.lengths.mean()))
        flops_token = profiler.flops_per_token(self.model.config, seq_len)
        peak = profiler.measure_matmul_peak(device=self.device)
        trace = profiler.maybe_trace(tp.profile_steps,
                                     self.run.folder if self.run is not None else ".")
        return flops_token, peak, trace

    def _evaluate_start(self, resumed: bool, flops_token: float, peak: float) -> None:
        """Step 0's validation loss, unless resuming (the run's log already has it)."""
        tp = self.tp
        self.model.train()
        if tp.qat:  # the initial eval sees the model as step `self.step` will train it
            set_lambda(self.model, qat_lambda(self.step, tp.qat_warmup_steps, tp.qat_schedule))
        if not resumed:
            self.initial_val, _ = self.validation_loss()
            self._log({"step": 0, "tokens": 0, "val_loss": self.initial_val,
                       "flops_per_token": flops_token, "peak_flops": peak})

    def _window(self) -> LogWindow:
        return LogWindow(self.device, self.per_step_metrics, self.dist.data_world)

    def _train_and_accumulate(self, step: int, window: LogWindow) -> tuple[float, torch.Tensor]:
        """One optimizer step (probes recorded when due), its sums added to the log window."""
        probing = self.probes is not None and self.probes.due(step + 1)
        with self.probes.recording(step + 1) if probing else contextlib.nullcontext():
            total, targets, extras, n_tokens, lr, grad_norm = self.train_step(step)
        self.step, self.tokens_seen = step + 1, self.tokens_seen + n_tokens
        window.add(self.dist.data_sum(total), targets, n_tokens,
                   {key: self.dist.data_sum(value) for key, value in extras.items()})
        return lr, grad_norm

    def _window_record(self, step: int, window: LogWindow, lr: float, grad_norm: torch.Tensor,
                       flops_token: float, peak: float) -> dict[str, Any]:
        """The window's log record with this step's learning rate, gradient norm and QAT mix."""
        tp = self.tp
        with self.timer.phase("logging"):
            record = window.record(self.step, self.tokens_seen, self.timer.pop(), flops_token,
                                   peak, self.device)
        qat = {"qat_lambda": qat_lambda(step, tp.qat_warmup_steps, tp.qat_schedule)} if tp.qat else {}
        head = {key: record.pop(key) for key in ("step", "tokens", "loss")}
        return {**head, "lr": lr, "grad_norm": float(grad_norm), **qat, **record}

    def _evaluate_now(self, record: dict[str, Any] | None, bar: Any) -> float:
        """Validation loss and the eval hook's figures, added to this step's log `record`, or
        logged on their own when no record is due (the training window keeps accumulating)."""
        # eval time lands in the next log window's phases, as it always has
        with self.timer.phase("eval"):
            val_loss, memory = self.validation_loss()
            extra = self.eval_hook(self.model) if self.eval_hook else {}
        evaluated = {"val_loss": val_loss, **memory, **extra}
        if record is not None:
            record.update(evaluated)
        else:
            self._log({"step": self.step, "tokens": self.tokens_seen, **evaluated})
            bar.set_postfix(val=f"{val_loss:.3f}", refresh=False)
        return val_loss

    def _log(self, record: dict[str, Any]) -> None:
        if self.run is not None and self.dist.is_main:
            self.run.log(record)
        if self.tracker is not None:
            self.tracker.log(record)


def train(model: torch.nn.Module, train_split: TokenSplit, val_split: TokenSplit, tp: TrainParams,
          run: RunLog | None, pad_id: int, objective: Objective = cross_entropy_objective,
          desc: str = "train", run_params: dict[str, Any] | None = None,
          folder: Path | None = None,
          eval_hook: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> dict[str, float]:
    """Train for `tp.steps` optimizer steps (resuming if a matching checkpoint exists)."""
    return Trainer(model, train_split, val_split, tp, run, pad_id, objective, desc, run_params,
                   folder, eval_hook).fit()
