"""Benchmark: llama, mamba, mamba2 and hawk at equal parameters: training speed, generation speed
and the inference state's memory against sequence length (issue 19's measured requirements).

Every architecture is built by lmpipe (`build_model`) at the width `width_for_params` gives for
the same parameter budget (default ~150k, 2 layers, the byte tokenizer's vocabulary), then:

1. training: lmpipe's optimizer (`build_optimizer`, AdamW with the defaults of `train`) and
   objective (`cross_entropy_objective`, the loss the training loop calls), the loop's step
   (backward on the per-target mean, grad clip, step, zero_grad) on the same random batch for
   every arch. Timed in one process and interleaved (llama mamba mamba2 hawk llama ...) so
   drift and a neighbour's load hit every arch alike; each round's warm-up steps are not timed.
   The ratio to llama is taken within each round, then summarized as median (min-max).
2. generation: `lmpipe.eval.generate` at batch 32, greedy, prompts of mixed length, through each
   model's own decoder (lmpipe/eval/decoders.py). The stop tokens are suppressed so every row
   samples exactly `--new-tokens` (an untrained model would otherwise stop wherever its argmax
   lands on END/EOS, and the arch comparison would be of random stopping points).
3. cache memory: the bytes of the inference state each decoder holds after prefilling `--gen-batch`
   rows of each length: llama's KV cache (DynamicCache keys and values), mamba's and mamba2's
   conv and SSM states (their caches' linear-attention layers), hawk's conv window and RG-LRU state (set on its
   temporal blocks). Counted from the tensors themselves, so nothing is typed in.

One torch thread by default (`--threads`): bench/README.md says why.

    .venv/bin/python bench/archs.py [--params 150000 --rounds 5 --steps 5 --lengths 64,128,...]
        [--archs llama,mamba2,...] [--out archs.json] [--html reports/archs.html]
        [--write-readme] [--quick]
    .venv/bin/python bench/archs.py --from archs.json [--html PAGE] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList, SuppressTokensLogitsProcessor

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import write_block

from lmpipe.core import protocol
from lmpipe.data.batching import Batch
from lmpipe.data.tokenizer import VOCAB_SIZE, build_byte_tokenizer
from lmpipe.eval.decoders import decoder_for
from lmpipe.eval.generate import Sampling, generate
from lmpipe.model.build import build_model, count_parameters
from lmpipe.model.mamba import parallel_scans
from lmpipe.model.params import ARCHS, ModelParams
from lmpipe.model.sizing import width_for_params
from lmpipe.train.losses import cross_entropy_objective
from lmpipe.train.optim import build_optimizer
from lmpipe.train.params import TrainParams

BLOCK_NAME = "archs"


def machine() -> dict[str, Any]:
    """The machine the figures come from (the fields bench/pipeline.py records)."""
    return {"cores": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def sized(arch: str, target: int, layers: int, context: int) -> ModelParams:
    """`arch` at the width whose parameter count is nearest `target`."""
    params = ModelParams(arch=arch, n_layers=layers, max_seq_len=context)
    return params.model_copy(update={"d_model": width_for_params(params, target)})


# --- 1. training ----------------------------------------------------------------------------------

def train_stepper(params: ModelParams, batch: Batch, seed: int) -> Callable[[], None]:
    """One optimizer step of a fresh model, as lmpipe's training loop takes it (fp32, eager)."""
    tp = TrainParams()
    model = build_model(params, seed=seed).train()
    parallel_scans(model)  # as the loop does (a mamba's mixers)
    optimizer = build_optimizer(model, tp)
    targets = batch.target_mask.sum().clamp(min=1)

    def step() -> None:
        loss_sum, _ = cross_entropy_objective(model, batch)
        (loss_sum / targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def time_training(models: dict[str, ModelParams], batch_size: int, length: int, rounds: int,
                  steps: int, warmup: int) -> dict[str, list[float]]:
    """Tokens/s of each arch per round, interleaved; the same batch for every arch."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB_SIZE, (batch_size, length), generator=gen)
    batch = Batch(input_ids=ids, target_mask=torch.ones(batch_size, length - 1),
                  positions=torch.arange(batch_size * length).view(batch_size, length))
    # built once and kept: each round continues the same optimizer, as a run would
    steppers = {arch: train_stepper(p, batch, seed=0) for arch, p in models.items()}
    rates: dict[str, list[float]] = {arch: [] for arch in models}
    for _ in range(rounds):
        for arch, step in steppers.items():
            for _ in range(warmup):
                step()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[arch].append(batch.n_tokens * steps / (time.perf_counter() - start))
    return rates


# --- 2. generation --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixedLength(Sampling):
    """Greedy sampling that never picks a stop token, so every row samples max_new_tokens."""

    suppress: tuple[int, ...] = ()

    def processors(self) -> LogitsProcessorList:
        chain = super().processors()
        chain.append(SuppressTokensLogitsProcessor(list(self.suppress)))
        return chain


def mixed_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` user prompts from 8 to ~100 characters, so the batch is left-padded unevenly."""
    gen = torch.Generator().manual_seed(seed)
    words = ["who", "what", "where", "when", "born", "city", "university", "works", "studied",
             "at", "the", "of", "in", "for"]
    prompts = []
    for _ in range(n):
        count = int(torch.randint(2, 20, (1,), generator=gen))
        text = " ".join(words[int(i)] for i in torch.randint(0, len(words), (count,), generator=gen))
        prompts.append(text)
    return prompts


def time_generation(models: dict[str, torch.nn.Module], tokenizer, batch: int, new_tokens: int,
                    rounds: int) -> dict[str, list[float]]:
    """Sampled tokens/s of `generate` per arch and round (interleaved), one batch of `batch`."""
    stops = [tokenizer.convert_tokens_to_ids(t) for t in (protocol.END, protocol.EOS)]
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    sampling = FixedLength(max_new_tokens=new_tokens, suppress=tuple(sorted(set(stops))))
    prompts = mixed_prompts(batch)
    for model in models.values():  # warm-up, not timed
        generate(model, tokenizer, prompts[:4], FixedLength(max_new_tokens=4,
                 suppress=sampling.suppress), batch_size=4)
    rates: dict[str, list[float]] = {arch: [] for arch in models}
    for _ in range(rounds):
        for arch, model in models.items():
            start = time.perf_counter()
            done = generate(model, tokenizer, prompts, sampling, batch_size=batch)
            seconds = time.perf_counter() - start
            sampled = sum(g.sampled for g in done)
            if sampled != batch * new_tokens:
                raise SystemExit(f"{arch}: sampled {sampled} tokens, expected {batch * new_tokens}")
            rates[arch].append(sampled / seconds)
    return rates


# --- 3. cache memory ------------------------------------------------------------------------------

def tensor_bytes(obj: Any, seen: set | None = None) -> int:
    """Bytes of every distinct tensor storage reachable from `obj` through attributes, dicts and
    lists: the memory allocated, each storage once (a view and the buffer under it, as llama's
    KV cache holds them (lmpipe/eval/kv_buffer.py), count as the buffer)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if torch.is_tensor(obj):
        storage = obj.untyped_storage()
        if ("storage", storage.data_ptr()) in seen:
            return 0
        seen.add(("storage", storage.data_ptr()))
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, torch.device, type)):
        return sum(tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


def state_bytes(decoder: Any) -> int:
    """The inference state a decoder holds: the model's cache object (llama, mamba, mamba2), or
    the conv and RG-LRU states set on hawk's temporal blocks (RecurrentGemma keeps them in its
    modules)."""
    if hasattr(decoder, "blocks"):
        return sum(tensor_bytes([b.conv1d_state, b.rg_lru.recurrent_states])
                   for b in decoder.blocks)
    return tensor_bytes(decoder.past.layers)


@torch.no_grad()
def cache_memory(specs: dict[str, ModelParams], batch: int,
                 lengths: list[int]) -> list[dict[str, Any]]:
    """Rows (arch, seq_len, bytes) of the state after prefilling `batch` rows of each length."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    # llama's positions sized to the longest prefill (RoPE: the parameter count is the same)
    models = {arch: build_model(params.model_copy(update={"max_seq_len": max(lengths)}), seed=0)
              .eval() for arch, params in specs.items()}
    for length in lengths:
        ids = torch.randint(0, VOCAB_SIZE, (batch, length), generator=gen)
        for arch, model in models.items():
            decoder = decoder_for(model)
            decoder.prefill(ids, torch.ones_like(ids))
            rows.append({"arch": arch, "seq_len": length, "batch": batch,
                         "bytes": state_bytes(decoder)})
            del decoder
    return rows


# --- output ---------------------------------------------------------------------------------------

def spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def report_lines(result: dict[str, Any], command: str) -> list[str]:
    """The Markdown block: settings, then one table per measurement."""
    m, s = result["machine"], result["settings"]
    archs = list(result["models"])
    lines = [(f"Measured with `{command}` on {result['date']} ({m['cores']} CPU cores, {m['arch']}, "
             f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}, Python {m['python']}, torch "
             f"{m['torch']}; {s['threads']} torch thread(s), eager, fp32). Each arch at the width "
             f"nearest {s['params']:,} parameters, {s['layers']} layers, vocabulary {VOCAB_SIZE}:"),
             "", "| arch | d_model | parameters |", "|---|---:|---:|"]
    lines += [f"| {a} | {result['models'][a]['d_model']} | {result['models'][a]['parameters']:,} |"
              for a in archs]
    train = result["train"]
    lines += ["", (f"Training (batch {s['train_batch']} x {s['train_len']} tokens, {s['rounds']} "
              f"interleaved rounds of {s['steps']} timed steps after {s['warmup']} warm-up steps; "
              "median (min–max) over rounds, the ratio taken within each round):"), "",
              "| arch | tokens/s | ratio to llama |", "|---|---:|---:|"]
    for a in archs:
        ratios = [x / y for x, y in zip(train[a], train["llama"])]
        lines.append(f"| {a} | {spread(train[a])} | {spread(ratios, '.2f')} |")
    gen = result["generate"]
    lines += ["", (f"Generation (`lmpipe.eval.generate`, batch {s['gen_batch']}, greedy, "
              f"{s['new_tokens']} new tokens a row with stop tokens suppressed, prompts of "
              f"{s['prompt_chars'][0]}–{s['prompt_chars'][1]} characters; {s['gen_rounds']} "
              "interleaved rounds):"), "", "| arch | tokens/s | ratio to llama |",
              "|---|---:|---:|"]
    for a in archs:
        ratios = [x / y for x, y in zip(gen[a], gen["llama"])]
        lines.append(f"| {a} | {spread(gen[a])} | {spread(ratios, '.2f')} |")
    lengths = sorted({r["seq_len"] for r in result["cache"]})
    by = {(r["arch"], r["seq_len"]): r["bytes"] for r in result["cache"]}
    lines += ["", (f"Inference state after prefilling {s['gen_batch']} rows of each length "
              "(bytes; llama: KV cache, mamba and mamba2: conv + SSM states, hawk: conv + RG-LRU "
              "states):"),
              "", "| arch | " + " | ".join(f"T={n}" for n in lengths) + " |",
              "|---|" + "---:|" * len(lengths)]
    lines += [f"| {a} | " + " | ".join(f"{by[(a, n)]:,}" for n in lengths) + " |" for a in archs]
    return lines


def write_html(result: dict[str, Any], path: Path) -> None:
    """Cache bytes against sequence length, one line per arch (log-log), as one offline page."""
    import altair as alt
    import pandas as pd

    from lmpipe.core.outputs import write_atomic
    from lmpipe.report.page import Page, howto

    frame = pd.DataFrame(result["cache"])
    chart = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("seq_len:Q", scale=alt.Scale(type="log", base=2), title="sequence length (tokens)"),
        y=alt.Y("bytes:Q", scale=alt.Scale(type="log"), title="inference state (bytes)"),
        color=alt.Color("arch:N", title="arch"),
        tooltip=["arch", "seq_len", alt.Tooltip("bytes:Q", format=",")],
    ).properties(width=520, height=320)
    s = result["settings"]
    page = Page("archs", "inference state by architecture")
    page.add(howto(f"Bytes of the inference state after prefilling {s['gen_batch']} rows, at "
                   f"~{s['params']:,} parameters each (bench/archs.py, {result['date']}): the KV "
                   "cache grows with the sequence, the recurrent states do not."))
    page.chart("cache", chart)
    write_atomic(path, page.html())
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=150_000, help="parameter budget per arch")
    parser.add_argument("--layers", type=int, default=2)
    # one thread by default: on 2 cores shared with another job, 2 torch threads ran llama's
    # step 40x slower than 1 (2026-12-03: 430 against 18,000 tokens/s, the threads waiting on
    # each other), which times the scheduler rather than the architecture
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved training rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps a round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each round")
    parser.add_argument("--gen-batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gen-rounds", type=int, default=3)
    parser.add_argument("--lengths", default="64,128,256,512,1024",
                        help="prefill lengths of the cache table, comma-separated")
    parser.add_argument("--archs", default=",".join(ARCHS),
                        help="the architectures to measure, comma-separated (llama always: the "
                        "ratios are to it)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 rounds of 1 step, 8 new tokens, lengths 64,256")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--html", type=Path, help="draw cache bytes vs length into this page")
    parser.add_argument("--write-readme", action="store_true", help="the bench/README.md block")
    parser.add_argument("--from", dest="source", type=Path,
                        help="rebuild the printout, --html and --write-readme from a kept --out "
                        "file instead of measuring")
    args = parser.parse_args(argv)
    shown = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--write-readme"]
    if args.source:
        result = json.loads(args.source.read_text(encoding="utf-8"))
        # a file from before the command was recorded came from the defaults
        publish(result, result.get("command", "bench/archs.py"), None, args.html,
                args.write_readme)
        return
    if args.quick:
        args.rounds, args.steps, args.warmup, args.gen_rounds = 2, 1, 1, 1
        args.new_tokens, args.lengths = 8, "64,256"
    lengths = [int(n) for n in args.lengths.split(",")]
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    prompts = mixed_prompts(args.gen_batch)
    # the timed models' context covers training and generation (llama's generate stops at its
    # positions); the cache table builds its own at the longest prefill (cache_memory)
    context = max(args.train_len, max(map(len, prompts)) + 8 + args.new_tokens, 256)
    archs = ["llama", *(a for a in args.archs.split(",") if a and a != "llama")]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"--archs: unknown {', '.join(unknown)}; expected some of {', '.join(ARCHS)}")
    specs = {arch: sized(arch, args.params, args.layers, context) for arch in archs}
    tokenizer = build_byte_tokenizer()
    models = {arch: build_model(p, seed=0).eval() for arch, p in specs.items()}
    result: dict[str, Any] = {
        "date": date.today().isoformat(), "machine": machine(),
        "settings": {"params": args.params, "layers": args.layers, "threads": args.threads,
                     "train_batch": args.train_batch, "train_len": args.train_len,
                     "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                     "gen_batch": args.gen_batch, "new_tokens": args.new_tokens,
                     "gen_rounds": args.gen_rounds, "lengths": lengths,
                     "prompt_chars": [min(map(len, prompts)), max(map(len, prompts))]},
        "models": {a: {"d_model": p.d_model, "parameters": count_parameters(models[a])}
                   for a, p in specs.items()},
    }
    print("models: " + ", ".join(f"{a} d={v['d_model']} ({v['parameters']:,})"
                                  for a, v in result["models"].items()), flush=True)
    result["train"] = time_training(specs, args.train_batch, args.train_len, args.rounds,
                                    args.steps, args.warmup)
    print(f"training timed ({time.perf_counter() - started:.0f} s)", flush=True)
    result["generate"] = time_generation(models, tokenizer, args.gen_batch, args.new_tokens,
                                         args.gen_rounds)
    print(f"generation timed ({time.perf_counter() - started:.0f} s)", flush=True)
    result["cache"] = cache_memory(specs, args.gen_batch, lengths)
    result["seconds"] = time.perf_counter() - started
    # the figures' command, without the output flags that do not change them
    result["command"] = " ".join(["bench/archs.py", *(a for a in shown if a not in (
        str(args.out), str(args.html), "--out", "--html"))])
    publish(result, result["command"], args.out, args.html, args.write_readme)


def publish(result: dict[str, Any], command: str, out: Path | None, page: Path | None,
            readme: bool) -> None:
    """Print the figures; write them as JSON (`out`), a chart page (`page`), the README block."""
    lines = report_lines(result, command)
    print("\n".join(lines))
    print(f"\n{result['seconds']:.0f} s in all")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    if page:
        write_html(result, page)
    if readme:
        write_block(README, BLOCK_NAME, "\n".join(lines))


if __name__ == "__main__":
    main()
