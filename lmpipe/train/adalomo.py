"""AdaLomo (Lv et al. 2023; lomo-optim's `AdaLomo`) on any device: each parameter is updated
inside the backward pass, as soon as its gradient is complete, and the gradient freed at once, so
the whole model's gradients never exist together.

Its update is Adafactor's factored second moment (no first moment), the update clipped to RMS 1
and the step scaled by the parameter's RMS: p -= lr * max(1e-3, RMS(p)) * update. lomo-optim
0.1.1 allocates that state with a hard-coded `.cuda()`; `DeviceAdaLomo` allocates it on each
parameter's own device and otherwise runs the library's update unchanged. It adds what the
library leaves out:
- lmpipe's weight-decay convention: decoupled decay p *= 1 - lr * max(1e-3, RMS(p)) * wd (the
  library's formula) on the weight matrices of linear layers only, where the library decays
  every parameter;
- the gradient norm of every step (measured in the hooks before each gradient is consumed);
- its state in `state_dict()` (the library keeps it outside `Optimizer.state`), so a checkpoint
  resumes it and `state_bytes` counts it;
- removing its hooks when training ends.

The training loop calls `fused_step(loss, lr, grad_clip)` instead of backward + step. With
`grad_clip > 0` a first backward pass measures the gradient norm (the library's `grad_norm`) and the
second applies the clipped update: a clipped step costs two backward passes. Because the weights
change during backward it cannot accumulate micro-batches, average gradients across processes or
recompute activations: TrainParams refuses grad_accum > 1, grad_checkpointing and fp16 with it,
the loop refuses more than one process.
"""

from __future__ import annotations

import math

import torch


def _adalomo_class():
    try:
        from lomo_optim import AdaLomo
    except ImportError:
        raise ImportError("optimizer 'adalomo' needs the lomo extra: "
                          "pip install 'lmpipe[lomo]'") from None
    return AdaLomo


def build_adalomo(model: torch.nn.Module, lr: float, weight_decay: float,
                  decayed: set[int]) -> torch.optim.Optimizer:
    """AdaLomo over `model`'s parameters; `decayed`: ids of the parameters that take weight decay."""
    cls = _adalomo_class()

    class DeviceAdaLomo(cls):
        """lomo-optim's AdaLomo with its state on the parameters' device (module docstring)."""

        def __init__(self) -> None:
            # the library's constructor, less its `.cuda()` and DeepSpeed branch
            self.model, self.lr, self.loss_scale = model, lr, None
            self.clip_grad_norm = self.clip_grad_value = None
            self.weight_decay, self.do_weight_decay = 0.0, False  # decay: _decay below
            self.eps, self.step_num, self.decay_rate, self.clip_threshold = (1e-30, 1e-3), 0, -0.8, 1.0
            self.gather_norm, self.grad_norms, self.clip_coef = False, [], None
            self.zero3_enabled = False
            self.exp_avg_sq, self.exp_avg_sq_row, self.exp_avg_sq_col = {}, {}, {}
            self.names = dict(model.named_parameters())
            for n, p in self.names.items():
                zeros = {"dtype": torch.float32, "device": p.device}
                if p.dim() == 1:
                    self.exp_avg_sq[n] = torch.zeros(p.shape[0], **zeros)
                else:
                    self.exp_avg_sq_row[n] = torch.zeros(p.shape[0], **zeros)
                    self.exp_avg_sq_col[n] = torch.zeros(p.shape[1], **zeros)
            self.step_norms: list[torch.Tensor] = []
            library_update = self.fuse_update()

            def update(x):
                with torch.no_grad():
                    for p in self.names.values():
                        if p.requires_grad and p.grad is not None and not self.gather_norm:
                            self.step_norms.append(p.grad.float().norm())
                            self._decay(p)
                return library_update(x)

            self.grad_func = update
            self.hooks = [p.register_hook(update) for p in self.names.values() if p.requires_grad]
            torch.optim.Optimizer.__init__(self, model.parameters(), {"lr": lr})
            self._expose_state()

        def _expose_state(self) -> None:
            """Point `Optimizer.state` at the library's tensors (updated in place), so
            `state_dict()` saves them and `state_bytes` counts them."""
            for n, p in self.names.items():
                self.state[p] = {"step": torch.tensor(float(self.step_num))}
                for key in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
                    if n in getattr(self, key):
                        self.state[p][key] = getattr(self, key)[n]

        def _decay(self, p: torch.Tensor) -> None:
            if weight_decay > 0 and id(p) in decayed:
                scale = max(self.eps[1], (p.float().norm() / math.sqrt(p.numel())).item())
                p.mul_(1.0 - self.lr * scale * weight_decay)

        def fused_step(self, loss: torch.Tensor, lr: float, grad_clip: float) -> torch.Tensor:
            """Backward and update in one pass (two with clipping); the gradient norm before
            clipping."""
            self.step_norms = []
            if grad_clip > 0:
                self.clip_grad_norm = grad_clip
                self.grad_norm(loss)
            self.fused_backward(loss, lr)
            return torch.linalg.vector_norm(torch.stack(self.step_norms))

        def remove_hooks(self) -> None:
            for hook in self.hooks:
                hook.remove()
            self.hooks = []

        def state_dict(self) -> dict:
            self._expose_state()
            return super().state_dict()

        def load_state_dict(self, state_dict: dict) -> None:
            super().load_state_dict(state_dict)
            for n, p in self.names.items():
                state = self.state[p]
                self.step_num = int(state["step"].item())
                for key in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
                    if key in state:
                        getattr(self, key)[n] = state[key]

    return DeviceAdaLomo()
