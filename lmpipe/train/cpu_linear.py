"""fp32 linear layers on CPU through oneDNN's GEMM instead of torch's default BLAS (MKL).

PyTorch's CPU wheels run an fp32 `nn.Linear` through MKL's sgemm. On AMD CPUs MKL takes a slower
code path than the hardware allows: on this project's machines (AMD EPYC, avx512) oneDNN, which
ships inside the same torch, multiplies a training step's matrices 2.2x as fast
(bench/linear_kernels.py). `train.cpu_linear: onednn` (the default) therefore routes every plain
`nn.Linear` of a model trained on CPU in fp32 through `torch.ops.mkldnn._linear_pointwise`, the
op torch's own compiler emits for CPU linears, with its gradients through the same op:

- forward: `y = x W^T (+ b)`, one oneDNN matmul;
- input gradient: `g W`, the same op with `W^T` (a view) as its weight;
- weight gradient: `g^T x`, the same op on a transposed copy of the narrower of `g` and `x`
  (of `x` when they are as wide). Linears that read the same input (q, k and v; gate and up)
  share one transposed copy of it (`TransposedInputs`): 12 of the student's 29 copies a step.

The arithmetic is IEEE fp32 on both paths (no reduced-precision mode), so results differ from
MKL's only by the order of summation (~1e-6 relative); on a given machine they are the same run
to run. Anything else (bf16/fp16 autocast, other devices, `train.compile`, a device mesh, QAT's
BitLinear) keeps torch's own path, and `train.cpu_linear: torch` turns this off.
"""

from __future__ import annotations

import threading

import torch

_NO_POST_OP = ("none", [], "")  # oneDNN's fused post-op: none (attr, scalars, algorithm)


def available() -> bool:
    """Whether this torch build has oneDNN and the linear op (CPU builds of torch 2.x do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _matmul_wt(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`a @ w.T` for 2-D fp32 CPU tensors through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, w, None, *_NO_POST_OP)


def input_grad(grad_rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`g W` (rows x in) through oneDNN: `W^T` is a view, which the op reads as it is."""
    return _matmul_wt(grad_rows, weight.t())


class TransposedInputs(threading.local):
    """The last transposed copy of a linear's saved input, handed to the next linear whose saved
    input is the same tensor: q, k and v read one normed hidden state, gate and up another, and
    each would copy it again. The entry holds its source, so while it lives no other tensor can
    take the source's address; with the address, shape, strides and version counter equal, the
    input is the same values. Per thread, so an eval in another thread never sees the entry."""

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None
        self.key: tuple | None = None
        self.copy: torch.Tensor | None = None

    def of(self, rows: torch.Tensor) -> torch.Tensor:
        """`rows.t().contiguous()`, shared with the previous call's when `rows` is the same."""
        key = (rows.data_ptr(), rows.shape, rows.stride(), rows._version)
        if self.source is None or self.key != key:
            self.source, self.key, self.copy = rows, key, rows.t().contiguous()
        return self.copy

    def clear(self) -> None:
        """Drop the entry (each forward does: a backward's copy is no use to the next step)."""
        self.source = self.key = self.copy = None


TRANSPOSED_INPUTS = TransposedInputs()


def weight_grad(grad_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`g^T x` (out x in) through oneDNN. Both operands are summed over their rows, so one of
    them has to be laid out transposed, a copy; the op's first operand must be that copy, so it
    is the narrower of `g` (rows x out) and `x` (rows x in), and `x` when they are as wide, whose
    copy the other linears reading it share (`TransposedInputs`). Either way the product is the
    same fp32 sum; the narrower copy is 1.2x as fast for a widening layer
    (bench/linear_kernels.py)."""
    if grad_rows.shape[1] >= rows.shape[1]:  # copy x^T, transpose the (out x in) result
        return _matmul_wt(TRANSPOSED_INPUTS.of(rows), grad_rows.t()).t().contiguous()
    return _matmul_wt(grad_rows.t(), rows.t())


class _OneDNNLinearFunction(torch.autograd.Function):
    """`x W^T + b` and its gradients, each one oneDNN matmul."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        TRANSPOSED_INPUTS.clear()
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.input_shape, ctx.has_bias = x.shape, bias is not None
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, *_NO_POST_OP)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = input_grad(grad_rows, weight).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad(grad_rows, rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(torch.nn.Linear):
    """An `nn.Linear` (same parameters, same state dict) whose fp32 CPU forward and backward run
    on oneDNN; any other input goes the way `nn.Linear` sends it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
            return _OneDNNLinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)


def use_onednn_linears(model: torch.nn.Module) -> int:
    """Route every plain `nn.Linear` of `model` through oneDNN (in place: the module's class
    changes, its parameters and state dict do not); returns how many. Subclasses of `nn.Linear`
    (QAT's BitLinear, quantized layers) have forwards of their own and are left as they are."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = OneDNNLinear
            swapped += 1
    return swapped


def use_torch_linears(model: torch.nn.Module) -> None:
    """Undo `use_onednn_linears`: every OneDNNLinear back to a plain `nn.Linear`."""
    for module in model.modules():
        if type(module) is OneDNNLinear:
            module.__class__ = torch.nn.Linear
    TRANSPOSED_INPUTS.clear()
