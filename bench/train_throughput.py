"""Benchmark: lmpipe's training loop beside nanoGPT's, same configuration, same machine, same hour.

nanoGPT's CPU Shakespeare configuration on both sides: 4 layers, 4 heads, 128 dims, block 64,
batch 12, lr 1e-3 (warmup 100, cosine to 1e-4 at the last step), AdamW beta2 0.99, weight decay
0.1, grad clip 1.0, no dropout, 2000 iterations, tiny Shakespeare split 90/10, character level on
both sides (nanoGPT: the 65 characters of the text; lmpipe: its `char` tokenizer over the same
text, those 65 plus its unknown and special tokens; `--tokenizer byte` takes its 265-id byte
vocabulary instead, the same characters since the text is ASCII), so both losses are nats per
character. lmpipe's block is Llama's (RMSNorm, RoPE, SwiGLU of width 344, about GPT's 4·d MLP
in parameters).

nanoGPT runs from a scratch copy of `../shared/anchors/nanoGPT` (commit 3adf61e, MIT; its command
is in ../shared/anchors/README.md; nothing of it is copied into lmpipe). The two run as whole
processes, alternating (nanoGPT first in even pairs, lmpipe first in odd ones), each with the same
torch threads. Per run it takes the same statistic from each side: the median over 100-step
windows of the window's mean wall-clock step time, the first window skipped (nanoGPT, run with
`--log_interval=1`, prints every iteration's time, the iterations that ran an evaluation left
out; lmpipe's steps are stamped at their start, so each step's time holds all of the loop's work
until the next, where lmpipe's own `step_time_s` sums only its timed phases, kept in the JSON as
`ms_per_step_phases`), tokens/s = batch x block / that time, the whole process's wall time and
the final validation loss (nanoGPT: 20 batches at its last eval; lmpipe: the whole validation
split).
It prints each run, then the ratio lmpipe/nanoGPT of tokens/s as the median and range over the
pairs, and the same for wall time. No figure of either side is typed in here: every ratio is from
this run.

    .venv/bin/python bench/train_throughput.py                      # 2 pairs, eager, 2000 steps
    .venv/bin/python bench/train_throughput.py --compile            # torch.compile on both sides
    .venv/bin/python bench/train_throughput.py --precision bf16     # lmpipe autocasts to bf16
    .venv/bin/python bench/train_throughput.py --cpu-linear torch   # lmpipe's linears on MKL
    .venv/bin/python bench/train_throughput.py --allocator system   # glibc's default thresholds
    .venv/bin/python bench/train_throughput.py --pairs 3 --out tp.json --write-readme
    .venv/bin/python bench/train_throughput.py --from tp.json --write-readme   # no rerun
    .venv/bin/python bench/train_throughput.py --lmpipe-only        # one lmpipe run, JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from readme_block import write_block

ANCHOR = ROOT.parent / "shared" / "anchors" / "nanoGPT"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
BATCH, BLOCK = 12, 64
WINDOW = 100  # steps per lmpipe log record (log_every), and nanoGPT's iterations per window
EVAL_INTERVAL = 250  # nanoGPT's eval_interval (its config's): those iterations evaluate
README = ROOT / "bench" / "README.md"


def lmpipe_run(data: Path, steps: int, threads: int, compile: bool, d_ff: int,
               precision: str = "fp32", tokenizer_kind: str = "char",
               cpu_linear: str = "onednn") -> dict[str, Any]:
    """One lmpipe training run in this process (the `--lmpipe-only` body)."""
    import numpy as np

    from lmpipe.core.run_folder import RunLog
    from lmpipe.data.tokenizer_kinds import build_tokenizer
    from lmpipe.data.tokens import TokenSplit, write_meta, write_split
    from lmpipe.model.build import build_model, count_parameters
    from lmpipe.model.params import ModelParams
    from lmpipe.train.loop import Trainer, train
    from lmpipe.train.params import TrainParams

    t0 = time.perf_counter()
    text = data.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))  # nanoGPT's prepare.py splits the characters 90/10 the same way
    # char: the whole corpus' characters, as nanoGPT's prepare.py (plus lmpipe's special tokens,
    # never in this text); byte: lmpipe's byte vocabulary, the same characters here (ASCII text)
    tokenizer = build_tokenizer(tokenizer_kind, [text])
    work = Path(tempfile.mkdtemp(prefix="lmpipe-throughput-"))
    ids = [tokenizer(part, add_special_tokens=False)["input_ids"] for part in (text[:cut], text[cut:])]
    splits = {"train": write_split(work, "train", [ids[0]], "all"),
              "val": write_split(work, "val", [ids[1]], "all")}
    write_meta(work, len(tokenizer), np.uint16, "all", splits)
    tp = TrainParams(steps=steps, batch_size=BATCH, lr=1e-3, min_lr_ratio=0.1, warmup_steps=100,
                     beta2=0.99, weight_decay=0.1, grad_clip=1.0, sampling="windows",
                     block_size=BLOCK, loss_on="all", log_every=WINDOW, eval_every=steps,
                     threads=threads, compile=compile, precision=precision, seed=1337,
                     cpu_linear=cpu_linear)
    model = build_model(ModelParams(d_model=128, n_layers=4, n_heads=4, d_ff=d_ff,
                                    max_seq_len=BLOCK + 1), seed=1337, tokenizer=tokenizer)
    # the wall clock at the start of every optimizer step, as nanoGPT's log gives the wall time
    # between its iterations: lmpipe's own step_time_s sums its timed phases (data, forward and
    # backward, optimizer, logging) and leaves out the loop's work between them
    started: dict[int, float] = {}
    step_once = Trainer._train_and_accumulate

    def stamped(self, step: int, window):
        started[step] = time.perf_counter()
        return step_once(self, step, window)

    Trainer._train_and_accumulate = stamped
    try:
        with RunLog(work / "run", "bench", "throughput", {"train": tp.model_dump()}) as run:
            summary = train(model, TokenSplit.open(work, "train"), TokenSplit.open(work, "val"),
                            tp, run, tokenizer.pad_token_id, desc="throughput")
            run.finish(**summary)
    finally:
        Trainer._train_and_accumulate = step_once
    records = [json.loads(line) for line in (work / "run/metrics.jsonl").open()]
    steady = [r for r in records if "step_time_s" in r][1:]  # the first window warms up
    phases = statistics.median(r["step_time_s"] for r in steady) * 1000
    # step i's time: from its start to step i+1's (the last step, which evaluates, has none);
    # 1-based like nanoGPT's iteration numbers, so the same windows and the same statistic. The
    # steps that end in a checkpoint are left out, as nanoGPT's iterations that evaluate (and
    # then save) are
    times = {i + 1: (started[i + 1] - started[i]) * 1000 for i in range(steps - 1)
             if (i + 1) % tp.checkpoint_every != 0}
    ms = statistics.median(window_means(times, steps, skip_evals=False))
    shutil.rmtree(work)
    return {"side": "lmpipe", "params": count_parameters(model), "ms_per_step": ms,
            "ms_per_step_phases": phases,
            "tokens_per_s": BATCH * BLOCK / ms * 1000, "val_loss": summary["final_val_loss"],
            "vocab": len(tokenizer), "wall_s": time.perf_counter() - t0}


def window_means(times: dict[int, float], steps: int, skip_evals: bool = True) -> list[float]:
    """Iteration times (ms, keyed 1..steps) as the mean of each window of `WINDOW` iterations,
    the first window skipped (warm-up). nanoGPT's iteration i runs from the end of iteration i-1
    to the end of i, so iteration 0 (warm-up) and, with `skip_evals`, every iteration that began
    with an evaluation (a multiple of EVAL_INTERVAL) are left out; lmpipe evaluates only at its
    last step, which has no time."""
    means = []
    for first in range(WINDOW + 1, steps + 1, WINDOW):
        window = [times[i] for i in range(first, first + WINDOW)
                  if i in times and not (skip_evals and i % EVAL_INTERVAL == 0)]
        if window:
            means.append(statistics.fmean(window))
    if not means:
        raise SystemExit(f"nanoGPT logged no iteration time after its first {WINDOW} iterations "
                         f"(--steps {steps} must exceed {WINDOW})")
    return means


def nanogpt_workspace(data: Path) -> Path:
    """A writable copy of the anchor with tiny Shakespeare prepared as its character dataset."""
    if not (ANCHOR / "train.py").is_file():
        raise SystemExit(f"{ANCHOR}: nanoGPT not found (../shared/anchors/nanoGPT beside the "
                         "project)")
    work = Path(tempfile.mkdtemp(prefix="nanogpt-")) / "nanoGPT"
    shutil.copytree(ANCHOR, work)
    prepared = work / "data" / "shakespeare_char"
    shutil.copy(data, prepared / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=prepared, check=True,
                   capture_output=True, text=True)
    return work


def nanogpt_run(work: Path, steps: int, compile: bool, env: dict[str, str]) -> dict[str, Any]:
    """One nanoGPT `train.py` process, timed whole; its log gives iteration times and val loss."""
    command = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
               f"--compile={compile}", "--eval_iters=20", "--log_interval=1",
               f"--eval_interval={EVAL_INTERVAL}",
               f"--block_size={BLOCK}", f"--batch_size={BATCH}", "--n_layer=4", "--n_head=4",
               "--n_embd=128", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
               "--dropout=0.0", "--out_dir=out"]
    t0 = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                            check=False)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{result.stderr[-3000:]}")
    times = {int(m.group(1)): float(m.group(2))
             for m in re.finditer(r"^iter (\d+): .* time ([\d.]+)ms", result.stdout, re.MULTILINE)}
    losses = re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", result.stdout,
                        re.MULTILINE)
    params = re.search(r"number of parameters: ([\d.]+)M", result.stdout)
    ms = statistics.median(window_means(times, steps))
    # the statistic before 2026-12-06: the median of single iterations, one every 100
    sampled = statistics.median(t for i, t in times.items() if i > 0 and i % WINDOW == 0)
    return {"side": "nanoGPT", "params": round(float(params.group(1)) * 1e6) if params else None,
            "ms_per_step": ms, "ms_per_step_sampled": sampled,
            "tokens_per_s": BATCH * BLOCK / ms * 1000,
            "val_loss": float(losses[-1][1]), "wall_s": wall}


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version()}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    # lmpipe's process keeps its freed memory unless told not to (lmpipe/core/allocator.py);
    # nanoGPT's runs on glibc's defaults, as it ships
    env.pop("LMPIPE_CPU_ALLOCATOR", None)
    lmpipe_env = dict(env, LMPIPE_CPU_ALLOCATOR=args.allocator)
    nano = nanogpt_workspace(Path(args.data))
    lmpipe_cmd = [sys.executable, str(Path(__file__).resolve()), "--lmpipe-only",
                  "--data", args.data, "--steps", str(args.steps), "--threads", str(args.threads),
                  "--d-ff", str(args.d_ff), "--precision", args.precision,
                  "--tokenizer", args.tokenizer, "--cpu-linear", args.cpu_linear] + (
                      ["--compile"] if args.compile else [])
    runs = []
    for pair in range(args.pairs):
        for side in (("nanoGPT", "lmpipe") if pair % 2 == 0 else ("lmpipe", "nanoGPT")):
            if side == "nanoGPT":
                run = nanogpt_run(nano, args.steps, args.compile, env)
            else:
                t0 = time.perf_counter()
                out = subprocess.run(lmpipe_cmd, env=lmpipe_env, capture_output=True, text=True,
                                     check=False)
                if out.returncode != 0:
                    raise SystemExit(f"lmpipe failed:\n{out.stderr[-3000:]}")
                run = json.loads(out.stdout.strip().splitlines()[-1])
                run["wall_s"] = time.perf_counter() - t0  # the whole process, as for nanoGPT
            run["pair"] = pair
            runs.append(run)
            print(f"pair {pair} {run['side']:>7}: {run['tokens_per_s']:,.0f} tokens/s, "
                  f"{run['ms_per_step']:.1f} ms/step, wall {run['wall_s']:.0f} s, "
                  f"val loss {run['val_loss']:.3f}", flush=True)
    shutil.rmtree(nano.parent)
    return {"date": date.today().isoformat(), "machine": machine(), "steps": args.steps,
            "threads": args.threads, "compile": args.compile, "precision": args.precision,
            "tokenizer": args.tokenizer, "cpu_linear": args.cpu_linear, "allocator": args.allocator,
            "runs": runs}


def ratios(results: dict[str, Any], key: str, invert: bool = False) -> list[float]:
    """Per pair: lmpipe's `key` over nanoGPT's (or nanoGPT's over lmpipe's with `invert`)."""
    out = []
    for pair in sorted({r["pair"] for r in results["runs"]}):
        side = {r["side"]: r[key] for r in results["runs"] if r["pair"] == pair}
        out.append(side["nanoGPT"] / side["lmpipe"] if invert else side["lmpipe"] / side["nanoGPT"])
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    speed, wall = ratios(results, "tokens_per_s"), ratios(results, "wall_s", invert=True)
    lines = []
    for side in ("nanoGPT", "lmpipe"):
        runs = [r for r in results["runs"] if r["side"] == side]
        lines.append(f"| {side} | {statistics.median(r['tokens_per_s'] for r in runs):,.0f} | "
                     f"{statistics.median(r['ms_per_step'] for r in runs):.1f} | "
                     f"{statistics.median(r['wall_s'] for r in runs):.0f} | "
                     f"{statistics.median(r['val_loss'] for r in runs):.3f} |")
    return lines + [
        "",
        (f"lmpipe / nanoGPT tokens/s: **{statistics.median(speed):.2f}x** (range "
        f"{min(speed):.2f}-{max(speed):.2f} over {len(speed)} pairs); whole-process speed "
        f"(nanoGPT's wall time / lmpipe's): {statistics.median(wall):.2f}x (range "
        f"{min(wall):.2f}-{max(wall):.2f}).")]


def vocab(results: dict[str, Any]) -> int:
    return next((r["vocab"] for r in results["runs"] if "vocab" in r), 265)


def readme_block(results: dict[str, Any]) -> str:
    m = results["machine"]
    mode = "torch.compile on both sides" if results["compile"] else "eager, no compile"
    precision = results.get("precision", "fp32")
    flags = (" --compile" if results["compile"] else "") + (
        f" --precision {precision}" if precision != "fp32" else "")
    mode += ("; lmpipe autocasts to bf16, nanoGPT trains fp32 (its only CPU mode)"
             if precision == "bf16" else "; both fp32")
    # runs before 2026-12-06's oneDNN linears recorded no cpu_linear: they ran torch's
    cpu_linear = results.get("cpu_linear", "torch")
    flags += " --cpu-linear torch" if cpu_linear == "torch" and "cpu_linear" in results else ""
    if not results["compile"] and precision == "fp32":  # where train.cpu_linear applies
        mode += (f"; lmpipe's linears on {'oneDNN' if cpu_linear == 'onednn' else 'torch (MKL)'}"
                 f" (train.cpu_linear: {cpu_linear}), nanoGPT's on torch's")
    # runs before the allocator setting (2026-12-06, seventh session) ran glibc's defaults
    allocator = results.get("allocator", "system")
    flags += " --allocator system" if allocator == "system" and "allocator" in results else ""
    mode += ("; lmpipe keeps its freed memory (LMPIPE_CPU_ALLOCATOR=keep), nanoGPT runs glibc's "
             "defaults" if allocator == "keep" else "; both on glibc's default allocator")
    return "\n".join([
        (f"Measured with `bench/train_throughput.py{flags}` on "
        f"{results['date']} ({m['cores']} CPU cores, {m['arch']}, Python {m['python']}; "
        f"{results['steps']} steps, {results['threads']} torch threads, {mode}; lmpipe's "
        f"{results.get('tokenizer', 'byte')} vocabulary of {vocab(results)} ids; medians over "
        f"{len(ratios(results, 'wall_s'))} alternating pairs):"), "",
        "| side | tokens/s | ms/step | wall s | val loss |", "|---|---:|---:|---:|---:|",
        *summary_lines(results)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="tiny-shakespeare text")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2, help="alternating nanoGPT/lmpipe pairs")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    parser.add_argument("--d-ff", type=int, default=344, help="SwiGLU width (8/3 * 128 ~ GPT MLP)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="lmpipe's train.precision (nanoGPT trains fp32 on CPU whatever its "
                             "dtype: it autocasts only on GPU)")
    parser.add_argument("--cpu-linear", choices=["onednn", "torch"], default="onednn",
                        help="lmpipe's train.cpu_linear (nanoGPT's nn.Linear runs torch's)")
    parser.add_argument("--allocator", choices=["keep", "system"], default="keep",
                        help="lmpipe's LMPIPE_CPU_ALLOCATOR (nanoGPT runs glibc's defaults)")
    parser.add_argument("--tokenizer", choices=["char", "byte"], default="char",
                        help="lmpipe's vocabulary: the corpus' characters, as nanoGPT's "
                             "shakespeare_char (default), or lmpipe's 265 byte ids")
    parser.add_argument("--lmpipe-only", action="store_true", help="one lmpipe run; a JSON line")
    parser.add_argument("--out", type=Path, help="write the raw figures as JSON")
    parser.add_argument("--from", dest="source", type=Path, help="a JSON from --out: no rerun")
    parser.add_argument("--write-readme", action="store_true",
                        help="rewrite bench/README.md's train-throughput block")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data}: tiny-shakespeare text not found (pass --data PATH)")
    if args.lmpipe_only:
        print(json.dumps(lmpipe_run(Path(args.data), args.steps, args.threads, args.compile,
                                    args.d_ff, args.precision, args.tokenizer,
                                    args.cpu_linear)))
        return
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    results = json.loads(args.source.read_text()) if args.source else measure(args)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(readme_block(results))
    if args.write_readme:
        name = "train-throughput" + ("-compiled" if results["compile"] else "")
        if results.get("precision", "fp32") != "fp32":
            name += "-" + results["precision"]
        if results.get("cpu_linear") == "torch":
            name += "-torch-linears"
        if results.get("allocator") == "system":
            name += "-system-allocator"
        write_block(README, name, readme_block(results))


if __name__ == "__main__":
    main()
