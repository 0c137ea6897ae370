"""Benchmark: would another transformers block beat nanoGPT's training step by 10%, eager?

Issue 18 asks lmpipe's eager training for ≥ 1.1x nanoGPT's tokens/s. bench/train_profile.py shows
the fastest Llama block eager PyTorch can express runs at ~0.90x, and nanoGPT's own block built by
transformers at ~1.00x. This measures the blocks left to try, at nanoGPT's CPU Shakespeare
configuration (4 layers, 4 heads, 128 dims, block 64, batch 12, 65 characters, AdamW with grad
clip 1.0, no dropout), interleaved in one process as train_profile.py times them:

- `nanoGPT` and `gpt2-transformers`: train_profile.py's sides, the reference and the baseline;
- `falcon-parallel`: transformers' Falcon with attention and MLP in parallel off one LayerNorm
  (GPT-J/PaLM's block: one norm and one residual add fewer per layer, q/k/v one matrix), RoPE;
- `gptj`: transformers' GPT-J (parallel block, separate q/k/v, RoPE over the whole head);
- `neox-parallel`: transformers' GPT-NeoX with `use_parallel_residual` (two norms, RoPE);
- `gpt2-relu`: GPT-2 with ReLU instead of the exact GELU;
- `gpt2-relu-math`: that, with attention as one `baddbmm` onto a causal mask made once, softmax
  and `bmm`, registered through transformers' `AttentionInterface` (at these shapes the matmul
  path beats the CPU flash kernel; it is checked equal to SDPA's logits before timing).

Every side uses lmpipe's AdamW kernel choice (`_adamw_kernel`: fused on CPU), as lmpipe trains.
Nothing here changes lmpipe: it prices the architecture choices issue 18's decision is about.

    .venv/bin/python bench/train_blocks.py [--repeats 7 --steps 30 --threads 2 --write-readme]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from readme_block import report
from train_profile import BATCH, BLOCK, finish, speed_table, steppers, time_steps

README = ROOT / "bench" / "README.md"
VOCAB = 65


def causal_math_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                          value: torch.Tensor, attention_mask: torch.Tensor | None,
                          scaling: float | None = None, dropout: float = 0.0,
                          **kwargs: object) -> tuple[torch.Tensor, None]:
    """Causal attention as baddbmm + softmax + bmm, for full windows with no padding (the
    bench's batches): transformers' attention-function signature, output (B, T, H, D)."""
    batch, heads, length, dim = query.shape
    mask = torch.full((length, length), float("-inf")).triu(1)
    scores = torch.baddbmm(mask.expand(batch * heads, length, length), query.flatten(0, 1),
                           key.flatten(0, 1).transpose(1, 2),
                           alpha=scaling if scaling is not None else dim ** -0.5)
    out = torch.bmm(scores.softmax(-1), value.flatten(0, 1)).view(batch, heads, length, dim)
    return out.transpose(1, 2), None


def block_models() -> dict[str, Callable[[], torch.nn.Module]]:
    """Name -> a fresh transformers model at nanoGPT's configuration."""
    from transformers import (
        AttentionInterface,
        FalconConfig,
        FalconForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        GPTJConfig,
        GPTJForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
    )

    AttentionInterface.register("causal_math", causal_math_attention)

    def gpt2(activation: str, attention: str) -> Callable[[], torch.nn.Module]:
        return lambda: GPT2LMHeadModel(GPT2Config(
            vocab_size=VOCAB, n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4,
            activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            attn_implementation=attention))

    return {
        "falcon-parallel": lambda: FalconForCausalLM(FalconConfig(
            vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            parallel_attn=True, new_decoder_architecture=False, multi_query=False, bias=False,
            alibi=False, hidden_dropout=0.0, attention_dropout=0.0,
            max_position_embeddings=BLOCK, attn_implementation="sdpa")),
        "gptj": lambda: GPTJForCausalLM(GPTJConfig(
            vocab_size=VOCAB, n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4, rotary_dim=32,
            n_inner=512, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0)),
        "neox-parallel": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512, hidden_act="gelu", rotary_pct=1.0,
            max_position_embeddings=BLOCK, use_parallel_residual=True, attention_dropout=0.0,
            hidden_dropout=0.0, attn_implementation="sdpa")),
        "gpt2-relu": gpt2("relu", "sdpa"),
        "gpt2-relu-math": gpt2("relu", "causal_math"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true", help="the bench/README.md block")
    args = parser.parse_args()
    from lmpipe.train.optim import _adamw_kernel

    reference = steppers(args.threads)
    models = block_models()
    data = torch.randint(0, VOCAB, (BATCH, BLOCK + 1))
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    torch.manual_seed(0)
    sdpa, math = models["gpt2-relu"](), models["gpt2-relu-math"]()
    math.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        gap = (sdpa(input_ids=inputs).logits - math(input_ids=inputs).logits).abs().max()
    if gap > 1e-5:
        raise SystemExit(f"the matmul attention differs from SDPA's by {gap:.2e}")

    def stepper(build: Callable[[], torch.nn.Module]) -> Callable[[], Callable[[], None]]:
        def make() -> Callable[[], None]:
            torch.manual_seed(1337)
            model = build()
            params = list(model.parameters())
            opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1,
                                    **_adamw_kernel(params))

            def step() -> None:
                logits = model(input_ids=inputs, use_cache=False).logits
                finish(model, opt, F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
            return step
        return make

    sides = {"nanoGPT": reference["nanoGPT"], "gpt2-transformers": reference["gpt2-transformers"]}
    sides |= {name: stepper(build) for name, build in models.items()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so drift hits every side alike
        for name, make in sides.items():
            times[name].append(time_steps(make(), args.steps))
    ms = {name: statistics.median(values) for name, values in times.items()}
    best = max((name for name in sides if name != "nanoGPT"), key=lambda n: ms["nanoGPT"] / ms[n])
    lines = speed_table("train_blocks.py", f"{args.threads} torch threads, eager", args.repeats,
                        args.steps, times, "nanoGPT")
    lines += ["", (f"The fastest block here is {best} at {ms['nanoGPT'] / ms[best]:.2f}x nanoGPT "
                   f"(issue 18 asks ≥ 1.1x).")]
    report(lines, README, "train-blocks", args.write_readme)


if __name__ == "__main__":
    main()
