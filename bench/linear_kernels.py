"""Benchmark: an fp32 linear layer's three matrix products on CPU, torch's default (MKL) beside
oneDNN's (`train.cpu_linear: onednn`, lmpipe/train/cpu_linear.py), then whole training steps.

For each linear of the student at nanoGPT's configuration (768 rows = batch 12 x block 64; q/k/v/o
128 -> 128, gate/up 128 -> 344, down 344 -> 128, the head 128 -> 75) it times, interleaved:

- forward `x W^T`: `F.linear` (MKL) against `torch.ops.mkldnn._linear_pointwise` (oneDNN);
- input gradient `g W` and weight gradient `g^T x`: `torch.mm` against OneDNNLinear's backward
  (lmpipe/train/cpu_linear.py `input_grad`, `weight_grad`), the weight gradient with its
  transposed copy made each call, as for a linear whose input no other linear shares;

and then one optimizer step of nanoGPT's GPT, lmpipe's model with torch's linears and lmpipe's
model with oneDNN's (bench/train_profile.py's steps), interleaved. Every product is checked equal
to torch's before timing. The speed is the machine's: on this project's AMD EPYC machines MKL runs
a slower code path than oneDNN; on Intel CPUs the two may be even.

    .venv/bin/python bench/linear_kernels.py [--repeats 7 --threads 2 --write-readme]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import report
from train_profile import speed_table, steppers, time_steps

from lmpipe.train.cpu_linear import (
    TRANSPOSED_INPUTS,
    available,
    input_grad,
    use_onednn_linears,
    weight_grad,
)

README = ROOT / "bench" / "README.md"
ROWS = 12 * 64
SHAPES = {"q/k/v/o": (128, 128), "gate/up": (128, 344), "down": (344, 128), "head": (128, 75)}


def cpu_model() -> str:
    """The CPU's model name (the kernels' speed depends on its vendor), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def onednn(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")


def unshared_weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`weight_grad` with its transposed copy made every call, as for a linear whose input no
    other linear reads (the same `x` call after call would otherwise reuse the first copy)."""
    TRANSPOSED_INPUTS.clear()
    return weight_grad(g, x)


def products(d_in: int, d_out: int) -> dict[str, tuple[Callable, Callable]]:
    """Product name -> (torch's call, oneDNN's call), on fixed random operands."""
    x, w, g = torch.randn(ROWS, d_in), torch.randn(d_out, d_in), torch.randn(ROWS, d_out)
    pairs = {"forward": (lambda: F.linear(x, w), lambda: onednn(x, w)),
             "input grad": (lambda: g @ w, lambda: input_grad(g, w)),
             "weight grad": (lambda: g.t() @ x, lambda: unshared_weight_grad(g, x))}
    for name, (reference, candidate) in pairs.items():
        torch.testing.assert_close(candidate(), reference(), rtol=1e-4, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return pairs


def kernel_table(repeats: int, calls: int) -> list[str]:
    lines = ["| linear (in -> out) | product | torch (MKL) µs | oneDNN µs | oneDNN speed-up |",
             "|---|---|---:|---:|---:|"]
    for label, (d_in, d_out) in SHAPES.items():
        for product, (reference, candidate) in products(d_in, d_out).items():
            torch_us, onednn_us = [], []
            for _ in range(repeats):  # interleaved, so drift hits both alike
                torch_us.append(time_steps(reference, calls) * 1000)  # µs
                onednn_us.append(time_steps(candidate, calls) * 1000)
            a, b = statistics.median(torch_us), statistics.median(onednn_us)
            lines.append(f"| {label} ({d_in} -> {d_out}) | {product} | {a:.0f} | {b:.0f} | "
                         f"{a / b:.2f}x |")
    return lines


def step_sides(threads: int) -> dict[str, Callable[[], Callable[[], None]]]:
    """nanoGPT's step, lmpipe's with torch's linears, lmpipe's with oneDNN's."""
    sides = steppers(threads)

    def with_onednn() -> Callable[[], None]:
        step = sides["lmpipe"]()
        models = [cell.cell_contents for cell in step.__closure__ or ()
                  if isinstance(cell.cell_contents, torch.nn.Module)]
        if len(models) != 1 or use_onednn_linears(models[0]) == 0:
            raise SystemExit("lmpipe-onednn: could not find the step's model and its linears")
        return step

    return {"nanoGPT": sides["nanoGPT"], "lmpipe (torch linears)": sides["lmpipe"],
            "lmpipe (oneDNN linears)": with_onednn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200, help="calls per kernel timing")
    parser.add_argument("--steps", type=int, default=30, help="training steps per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true", help="the bench/README.md block")
    args = parser.parse_args()
    if not available():
        raise SystemExit("this torch has no oneDNN (torch.backends.mkldnn)")
    torch.set_num_threads(args.threads)
    header = (f"Measured with `bench/linear_kernels.py` on {date.today().isoformat()} "
              f"({os.cpu_count()} CPU cores, {platform.machine()}, {cpu_model()}, Python "
              f"{platform.python_version()}; {args.threads} torch threads, fp32, {ROWS} rows; "
              f"median of {args.repeats} interleaved repeats of {args.calls} calls):")
    lines = [header, "", *kernel_table(args.repeats, args.calls), ""]
    sides = step_sides(args.threads)
    times: dict[str, list[float]] = {name: [] for name in sides}
    steps = {name: make() for name, make in sides.items()}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(time_steps(step, args.steps))
    lines += speed_table("linear_kernels.py", f"{args.threads} torch threads, eager, one "
                         "optimizer step on a fixed batch", args.repeats, args.steps, times,
                         "nanoGPT")
    report(lines, README, "linear-kernels", args.write_readme)


if __name__ == "__main__":
    main()
