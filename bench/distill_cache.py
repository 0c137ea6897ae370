"""Benchmark: teacher-cache size and fidelity, cache throughput, and cached vs live distill speed.

People world (needs the default pipeline's outputs: run `make run` first): the cache at k=32 in
the default encoding (u8 log-probs) and in fp16, bytes per token and the mean KL(teacher || cache
reconstruction) over every cached position and over target positions only, then what u8 costs
against fp16 as ratios of those KLs:

    KL ratio = KL(teacher || u8 reconstruction) / KL(teacher || fp16 reconstruction)

over all positions (dominated by the tail the top-k leaves out, which both share) and over
target positions (where the top-k holds nearly all the mass, so the log-prob encoding shows).

SmolLM2-135M-Instruct on tiny Shakespeare (needs the smollm2 extra): the same two figures at k=32
and k=128, the cache's throughput (tokens/s of teacher forward + compression + writes), then the
time per distill step of the shakespeare-smollm2 recipe's student from the cache and from the
live teacher, same batches. Usage:

    .venv/bin/python bench/distill_cache.py [--project .] [--shakespeare FILE] [--documents 400]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpipe.data.attention_masks import model_attention_mask  # noqa: E402
from lmpipe.data.batching import make_batches  # noqa: E402
from lmpipe.data.sources import paragraphs  # noqa: E402
from lmpipe.data.tokens import TokenSplit, tokenize_documents  # noqa: E402
from lmpipe.distill.cache.format import CacheSpec  # noqa: E402
from lmpipe.distill.cache.read import TeacherCache, reconstruct
from lmpipe.distill.cache.write import write_cache
from lmpipe.distill.objective import build_objective  # noqa: E402
from lmpipe.distill.teacher import CachedTeacher, LiveTeacher  # noqa: E402
from lmpipe.model.build import build_model, load_model  # noqa: E402
from lmpipe.distill.params import DistillParams  # noqa: E402
from lmpipe.params.config import load_params


@torch.no_grad()
def reconstruction_kl(model, cache: TeacherCache, batches, batch_size: int,
                      max_positions: int, attention: str = "causal",
                      token_mask=None) -> tuple[float, float, float]:
    """Mean KL(teacher's full distribution || the cache's reconstruction), over all cached
    positions and over target positions, for up to `max_positions` positions; and the mean
    probability mass the top-k covers. The teacher reads with the mask the cache was written
    with (`attention`, `token_mask`: lmpipe/data/attention_masks.py)."""
    total, count, target_total, target_count, covered = 0.0, 0, 0.0, 0, 0.0
    for batch in batches.sequential(batch_size):
        mask = model_attention_mask(attention, batch.positions, token_mask)
        logits = model(input_ids=batch.input_ids, attention_mask=mask).logits[:, :-1]
        real = (batch.positions[:, :-1] >= 0) & (batch.positions[:, 1:] >= 0)
        logp = torch.log_softmax(logits[real].float(), -1)
        rows = cache.rows(batch.positions[:, :-1][real].numpy())
        rebuilt = reconstruct(rows, logp.size(-1))
        covered += logp.exp().gather(-1, rows.ids).sum().item()
        kl = (logp.exp() * (logp - rebuilt)).sum(-1)
        targets = (batch.target_mask > 0)[real]
        total, count = total + kl.sum().item(), count + kl.numel()
        target_total += kl[targets].sum().item()
        target_count += int(targets.sum())
        if count >= max_positions:
            break
    return total / count, target_total / max(target_count, 1), covered / count


def cache_figures(label: str, model, split: TokenSplit, tp, pad_id: int, k: int, fmt: str,
                  batch_size: int, max_positions: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="lmpipe-cache-"))
    batches = make_batches(split, tp.sampling, batch_size, tp.block_size, 0, pad_id,
                           model.config.max_position_embeddings, tp.loss_on)
    manifest = write_cache(model, split, CacheSpec(k, fmt), pad_id, folder, batch_size,
                           {}, batches, attention=tp.attention, loss_on=tp.loss_on)
    kl_all, kl_targets, covered = reconstruction_kl(
        model, TeacherCache.open(folder), batches, batch_size, max_positions, tp.attention,
        split.mask if tp.loss_on == "mask" else None)
    row = {"teacher": label, "k": k, "logprobs": fmt, "bytes_per_token": manifest["bytes_per_token"],
           "kl_all": kl_all, "kl_targets": kl_targets, "top_k_mass": covered,
           "cache_tokens_per_s": manifest["tokens_per_s"],
           "positions": manifest["positions"], "folder": str(folder)}
    print(f"  {label:8s} k={k:<4d} {fmt:5s} {row['bytes_per_token']:7.1f} B/token   "
          f"KL all {kl_all:.2e}  targets {kl_targets:.2e} nats  top-k mass {covered:.3f}   "
          f"cache {row['cache_tokens_per_s']:,.0f} tokens/s over {row['positions']:,} positions",
          flush=True)
    return row


def u8_cost(u8: dict, fp16: dict) -> dict:
    """What u8 log-probs cost against fp16 at the same k: the KL ratios (module docstring) and
    the bytes saved per token."""
    return {"kl_all_ratio": u8["kl_all"] / fp16["kl_all"],
            "kl_targets_ratio": u8["kl_targets"] / fp16["kl_targets"],
            "bytes_saved_per_token": fp16["bytes_per_token"] - u8["bytes_per_token"]}


def people(project: Path) -> tuple[list[dict], dict]:
    params = load_params(project / "params.yaml")
    model, tokenizer = load_model(project / "runs/teacher/model")
    split = TokenSplit.open(project / "data/tokens", "train")
    print("people world teacher (runs/teacher), every train position:")
    rows = [cache_figures("people", model, split, params.teacher.train, tokenizer.pad_token_id,
                          32, fmt, 64, 10**9) for fmt in ("u8", "fp16")]
    cost = u8_cost(*rows)
    u8, fp16 = rows
    print(f"  u8 vs fp16 at k=32: KL over all positions {u8['kl_all']:.3g} vs {fp16['kl_all']:.3g} "
          f"nats ({cost['kl_all_ratio']:.2f}x), over targets {u8['kl_targets']:.3g} vs "
          f"{fp16['kl_targets']:.3g} nats ({cost['kl_targets_ratio']:.1f}x); u8 saves "
          f"{cost['bytes_saved_per_token']:.0f} bytes/token", flush=True)
    return rows, cost


def time_steps(student, objective, batches, steps: int) -> float:
    """Seconds per distill step (forward, teacher signal, backward, AdamW), after one warm-up."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        loss, _ = objective(student, batches(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


def smollm2(shakespeare: Path, documents: int, steps: int) -> tuple[list[dict], dict]:
    from lmpipe.data.tokenizer_kinds import build_tokenizer
    from lmpipe.model.pretrained import import_pretrained

    recipe = load_params(ROOT / "recipes/shakespeare-smollm2.yaml")
    tokenizer = build_tokenizer("smollm2")
    work = Path(tempfile.mkdtemp(prefix="lmpipe-smollm2-"))
    from lmpipe.core import protocol
    texts = [protocol.text_document(t) for t in paragraphs(shakespeare.read_text())[:documents]]
    tokenize_documents(texts, tokenizer, work / "tokens", 0.1, "all", 0)
    teacher = import_pretrained("smollm2", tokenizer, work / "teacher").eval()
    split = TokenSplit.open(work / "tokens", "train")
    print(f"SmolLM2-135M-Instruct on the first {documents} tiny-Shakespeare documents "
          f"({split.n_tokens:,} train tokens):")
    tp = recipe.teacher.train
    rows = [cache_figures("smollm2", teacher, split, tp, tokenizer.pad_token_id, k, "u8", 8, 20_000)
            for k in (32, 128)]
    # distill steps: the recipe's student and batch, from the k=32 cache vs the live teacher
    sp = recipe.student
    batches = make_batches(split, "windows", sp.train.batch_size, sp.train.block_size, 0,
                           tokenizer.pad_token_id, None, "all")
    dp = DistillParams(objective={"forward_kl": 0.5, "ce": 0.5})
    times = {}
    for name, source in (("cache", CachedTeacher(TeacherCache.open(rows[0]["folder"]))),
                         ("live", LiveTeacher(teacher))):
        student = build_model(sp.model, 0, tokenizer)
        times[name] = time_steps(student, build_objective(dp, source, student), batches, steps)
    speed = {"cache_step_s": times["cache"], "live_step_s": times["live"],
             "speedup": times["live"] / times["cache"], "student_parameters":
             sum(p.numel() for p in build_model(sp.model, 0, tokenizer).parameters()),
             "batch": f"{sp.train.batch_size} x {sp.train.block_size}"}
    print(f"  distill step ({speed['batch']} tokens, {speed['student_parameters']:,}-parameter "
          f"student): cache {times['cache'] * 1000:.0f} ms, live teacher {times['live'] * 1000:.0f} ms"
          f" -> {speed['speedup']:.1f}x faster from the cache", flush=True)
    return rows, speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=str(ROOT), help="a workspace after `make run`")
    parser.add_argument("--shakespeare", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    rows, cost = people(Path(args.project))
    speed = {}
    if not args.skip_smollm2:
        more, speed = smollm2(Path(args.shakespeare), args.documents, args.steps)
        rows += more
    print(json.dumps({"caches": [{k: v for k, v in r.items() if k != "folder"} for r in rows],
                      "u8_vs_fp16": cost, "distill_speed": speed}, indent=1))


if __name__ == "__main__":
    main()
