"""Benchmark: where a training step's time goes, lmpipe's model beside nanoGPT's, in one process.

bench/train_throughput.py measures whole runs side by side; this splits the gap it finds. At
nanoGPT's CPU Shakespeare configuration (4 layers, 4 heads, 128 dims, block 64, batch 12, AdamW,
grad clip 1.0, eager) it times one optimizer step, interleaved, for:

- `nanoGPT`: the GPT of ../shared/anchors/nanoGPT (imported from there, not copied; vocab 65);
- `lmpipe`: lmpipe's model (transformers' LlamaForCausalLM, byte vocab 265, fused AdamW), as the
  training loop calls it;
- `llama-functional`: the same Llama math on the same weights written as plain torch functions
  (no transformers modules, no mask or cache machinery): what is left is the architecture's own
  cost (RMSNorm, RoPE, SwiGLU's three matrices);
- `llama-functional-v65`: that, with the output head cut to nanoGPT's 65 characters;
- `llama-fused-v65`: that, with every fusion eager PyTorch offers the block: q, k and v one
  matrix (as nanoGPT's c_attn), gate and up one matrix, `F.rms_norm`, RoPE's tables made once
  and applied to q and k together. The fastest a Llama block gets without compile: if it does not
  reach 1.1x nanoGPT, no change to lmpipe's loop or transformers' plumbing can;
- `gpt2-transformers`: transformers' GPT2LMHeadModel at nanoGPT's configuration (its block:
  LayerNorm, learned positions, exact GELU; 65 characters, SDPA, no dropout) with lmpipe's fused
  AdamW: what changing lmpipe's block to nanoGPT's own, within transformers, would give.

The differences split lmpipe's gap into the framework's overhead (lmpipe - functional), the
vocabulary (functional - v65) and the architecture (v65 - nanoGPT). `--table` adds torch.profiler's
top operators per side. The functional forward is a measuring device only: it is checked equal to
transformers' logits before timing, and lmpipe never trains with it.

    .venv/bin/python bench/train_profile.py [--repeats 5 --steps 40 --threads 2 --table --write-readme]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT.parent / "shared" / "anchors" / "nanoGPT"
README = ROOT / "bench" / "README.md"
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import report

BATCH, BLOCK = 12, 64


def llama_functional(model, ids: torch.Tensor, vocab: int | None = None) -> torch.Tensor:
    """Llama's forward (causal, no padding) from the model's weights with plain torch calls."""
    cfg, inner = model.config, model.model
    batch, length = ids.shape
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads
    half = head_dim // 2
    freqs = torch.arange(length, dtype=torch.float32)[:, None] * inner.rotary_emb.inv_freq[None]
    angles = torch.cat((freqs, freqs), -1)
    cos, sin = angles.cos(), angles.sin()
    sin = torch.cat((-sin[:, :half], sin[:, half:]), -1)  # rotate_half's sign folded into sin

    def rope(x: torch.Tensor) -> torch.Tensor:
        return x * cos + torch.cat((x[..., half:], x[..., :half]), -1) * sin

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, cfg.rms_norm_eps)

    h = F.embedding(ids, inner.embed_tokens.weight)
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        x = norm(h, layer.input_layernorm.weight)
        q = F.linear(x, attn.q_proj.weight).view(batch, length, heads, head_dim).transpose(1, 2)
        k = F.linear(x, attn.k_proj.weight).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        v = F.linear(x, attn.v_proj.weight).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        h = h + F.linear(out.transpose(1, 2).reshape(batch, length, -1), attn.o_proj.weight)
        x = norm(h, layer.post_attention_layernorm.weight)
        gate = F.silu(F.linear(x, mlp.gate_proj.weight))
        h = h + F.linear(gate * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
    head = model.lm_head.weight if vocab is None else model.lm_head.weight[:vocab]
    return F.linear(norm(h, inner.norm.weight), head)


class FusedLlama(torch.nn.Module):
    """`model`'s weights, copied, with q/k/v and gate/up concatenated into one matrix each, and
    its forward with the fewest eager operators: the ceiling of a Llama block's speed."""

    def __init__(self, model, vocab: int, length: int) -> None:
        super().__init__()
        cfg, inner = model.config, model.model
        if cfg.num_key_value_heads != cfg.num_attention_heads:
            raise ValueError("FusedLlama: grouped-query attention is not fused here")
        self.heads, self.eps = cfg.num_attention_heads, cfg.rms_norm_eps
        self.head_dim = cfg.hidden_size // self.heads

        def weight(*tensors: torch.Tensor) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.cat([t.detach() for t in tensors]).clone())

        self.embed = weight(inner.embed_tokens.weight)
        self.blocks = torch.nn.ModuleList()
        for layer in inner.layers:
            attn, mlp, block = layer.self_attn, layer.mlp, torch.nn.ParameterDict()
            block["norm1"] = weight(layer.input_layernorm.weight)
            block["qkv"] = weight(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)
            block["o"] = weight(attn.o_proj.weight)
            block["norm2"] = weight(layer.post_attention_layernorm.weight)
            block["gate_up"] = weight(mlp.gate_proj.weight, mlp.up_proj.weight)
            block["down"] = weight(mlp.down_proj.weight)
            self.blocks.append(block)
        self.norm = weight(inner.norm.weight)
        self.head = weight(model.lm_head.weight[:vocab])
        half = self.head_dim // 2
        freqs = torch.arange(length, dtype=torch.float32)[:, None] * inner.rotary_emb.inv_freq[None]
        angles = torch.cat((freqs, freqs), -1)
        self.register_buffer("cos", angles.cos())
        sin = angles.sin()
        self.register_buffer("sin", torch.cat((-sin[:, :half], sin[:, half:]), -1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        width, half = self.embed.shape[1], self.head_dim // 2
        h = F.embedding(ids, self.embed)
        for block in self.blocks:
            x = F.rms_norm(h, (width,), block["norm1"], self.eps)
            qkv = F.linear(x, block["qkv"]).view(batch, length, 3, self.heads, self.head_dim)
            qkv = qkv.permute(2, 0, 3, 1, 4)
            qk = qkv[:2]  # RoPE on q and k at once
            qk = qk * self.cos + torch.cat((qk[..., half:], qk[..., :half]), -1) * self.sin
            out = F.scaled_dot_product_attention(qk[0], qk[1], qkv[2], is_causal=True)
            h = h + F.linear(out.transpose(1, 2).reshape(batch, length, width), block["o"])
            x = F.rms_norm(h, (width,), block["norm2"], self.eps)
            gate, up = F.linear(x, block["gate_up"]).chunk(2, -1)
            h = h + F.linear(F.silu(gate) * up, block["down"])
        return F.linear(F.rms_norm(h, (width,), self.norm, self.eps), self.head)


def steppers(threads: int) -> dict[str, Callable[[], Callable[[], None]]]:
    """Name -> a factory of a fresh model's optimizer step (fresh so no side warms another)."""
    sys.path.insert(0, str(ANCHOR))
    from model import GPT, GPTConfig  # nanoGPT's model.py, from the anchor folder

    from lmpipe.model.build import build_model
    from lmpipe.model.params import ModelParams
    from lmpipe.train.optim import _adamw_kernel

    torch.set_num_threads(threads)
    data = torch.randint(0, 65, (BATCH, BLOCK + 1))
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    llama = build_model(ModelParams(d_model=128, n_layers=4, n_heads=4, d_ff=344,
                                    max_seq_len=BLOCK + 1), seed=1337)
    with torch.no_grad():
        gap = (llama(input_ids=inputs).logits - llama_functional(llama, inputs)).abs().max()
        fused_gap = (llama(input_ids=inputs).logits[..., :65]
                     - FusedLlama(llama, 65, BLOCK)(inputs)).abs().max()
    if max(gap, fused_gap) > 1e-5:
        raise SystemExit(f"the functional Llama differs from transformers' by {gap:.2e}, the "
                         f"fused one by {fused_gap:.2e}")

    def nanogpt() -> Callable[[], None]:
        model = GPT(GPTConfig(block_size=BLOCK, vocab_size=65, n_layer=4, n_head=4, n_embd=128,
                              dropout=0.0, bias=False))
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")

        def step() -> None:
            _, loss = model(inputs, targets)
            finish(model, opt, loss)
        return step

    def lmpipe_side(forward: Callable) -> Callable[[], Callable[[], None]]:
        def make() -> Callable[[], None]:
            model = copy.deepcopy(llama)
            params = list(model.parameters())
            opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1,
                                    **_adamw_kernel(params))

            def step() -> None:
                logits = forward(model)
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
                finish(model, opt, loss)
            return step
        return make

    def fused() -> Callable[[], None]:
        model = FusedLlama(llama, 65, BLOCK)
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1,
                                **_adamw_kernel(params))

        def step() -> None:
            loss = F.cross_entropy(model(inputs).reshape(-1, 65), targets.reshape(-1))
            finish(model, opt, loss)
        return step

    def gpt2() -> Callable[[], None]:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(1337)
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=65, n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4,
            activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            attn_implementation="sdpa"))
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1,
                                **_adamw_kernel(params))

        def step() -> None:
            logits = model(input_ids=inputs, use_cache=False).logits
            finish(model, opt, F.cross_entropy(logits.reshape(-1, 65), targets.reshape(-1)))
        return step

    return {
        "nanoGPT": nanogpt,
        "lmpipe": lmpipe_side(lambda m: m(input_ids=inputs, use_cache=False).logits),
        "llama-functional": lmpipe_side(lambda m: llama_functional(m, inputs)),
        "llama-functional-v65": lmpipe_side(lambda m: llama_functional(m, inputs, vocab=65)),
        "llama-fused-v65": fused,
        "gpt2-transformers": gpt2,
    }


def finish(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def time_steps(step: Callable[[], None], steps: int) -> float:
    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def speed_table(bench: str, setting: str, repeats: int, steps: int,
                times: dict[str, list[float]], ref: str) -> list[str]:
    """The Markdown lines of an interleaved bench's table: each side's median ms/step and range,
    its speed against `ref` from the medians and from the fastest repeats. `setting` says how
    the steps ran (threads, eager or compiled)."""
    ms = {name: statistics.median(values) for name, values in times.items()}
    # the fastest repeat beside the median: on a shared machine a neighbour only ever slows a
    # repeat down, so the minimum is the steadier figure when the ranges are wide
    fastest = {name: min(values) for name, values in times.items()}
    lines = [(f"Measured with `bench/{bench}` on {date.today().isoformat()} "
              f"({os.cpu_count()} CPU cores, {platform.machine()}, Python "
              f"{platform.python_version()}; {setting}; median of {repeats} interleaved repeats "
              f"of {steps} steps):"), "",
             (f"| side | ms/step (range) | speed vs {ref} (its ms / this ms) | the same, fastest "
              "repeats |"), "|---|---:|---:|---:|"]
    return lines + [f"| {name} | {ms[name]:.1f} ({min(v):.1f}–{max(v):.1f}) | "
                    f"{ms[ref] / ms[name]:.2f}x | {fastest[ref] / fastest[name]:.2f}x |"
                    for name, v in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="torch.profiler's top operators")
    parser.add_argument("--write-readme", action="store_true", help="the bench/README.md block")
    args = parser.parse_args()
    sides = steppers(args.threads)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so drift hits every side alike
        for name, make in sides.items():
            times[name].append(time_steps(make(), args.steps))
    ms = {name: statistics.median(values) for name, values in times.items()}
    lines = speed_table("train_profile.py", f"{args.threads} torch threads, eager", args.repeats,
                        args.steps, times, "nanoGPT")
    lines += ["", ("lmpipe's gap to nanoGPT, split: "
              f"framework (transformers' modules, masks, cache plumbing) "
              f"{ms['lmpipe'] - ms['llama-functional']:+.1f} ms; vocabulary (265 byte ids vs 65 "
              f"characters) {ms['llama-functional'] - ms['llama-functional-v65']:+.1f} ms; "
              f"architecture (RMSNorm, RoPE, SwiGLU against LayerNorm, learned positions, GELU) "
              f"{ms['llama-functional-v65'] - ms['nanoGPT']:+.1f} ms. Every fusion eager "
              f"PyTorch offers (llama-fused-v65) takes the block to "
              f"{ms['nanoGPT'] / ms['llama-fused-v65']:.2f}x nanoGPT; nanoGPT's own block in "
              f"transformers (gpt2-transformers) runs at "
              f"{ms['nanoGPT'] / ms['gpt2-transformers']:.2f}x.")]
    report(lines, README, "train-profile", args.write_readme)
    if args.table:
        from torch.profiler import ProfilerActivity, profile

        for name in ("nanoGPT", "lmpipe"):
            step = sides[name]()
            time_steps(step, 5)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(20):
                    step()
            print(f"\n{name}, 20 steps:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
