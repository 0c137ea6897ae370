"""Bench: training on a device mesh — tokens/s, memory per process and the collectives of one
step for data parallel only (4 x 1), tensor parallel only (1 x 4) and 2 x 2, beside one process.

Each configuration trains the same Llama (default d_model 512, 8 layers, 8 heads, d_ff 2048,
byte vocabulary; 8 windows of 128 tokens a step, AdamW) for `--steps` steps under torchrun
(bench/mesh_worker.py, gloo on CPU, one thread a process), then profiles one more step. Printed
per configuration: tokens/s of the whole mesh (median of the log windows after the first) and
its ratio to one process measured in the same run; per process the peak RSS and the bytes of
parameters and optimizer state it holds (the largest over its ranks); per step the number and
payload bytes of each collective as the profiler saw them (the tensors handed to gloo, not
the bytes on the wire).

    .venv/bin/python bench/mesh.py --out /tmp/mesh.json --write-readme
    .venv/bin/python bench/mesh.py --from /tmp/mesh.json --write-readme
    .venv/bin/python bench/mesh.py --d-model 32 --layers 2 --heads 4 --steps 4 --name mesh-tiny \
        --write-readme                                                          # the tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from in_tool_learning import machine, write_readmes

CONFIGS = ("none", "4x1", "1x4", "2x2")
NAMES = {"none": "one process", "4x1": "dp only (4 x 1)", "1x4": "tp only (1 x 4)",
         "2x2": "2 x 2"}


def make_tokens(folder: Path) -> Path:
    """A people world tokenized with the byte tokenizer: the text does not matter here."""
    from lmpipe.data.params import WorldParams
    from lmpipe.data.tokenizer import build_byte_tokenizer
    from lmpipe.data.tokens import tokenize_world
    from lmpipe.data.world import write_world

    write_world(WorldParams(seed=0, people=400, heldout_people=20), folder / "world")
    tokenize_world(folder / "world", build_byte_tokenizer(), folder / "tokens",
                   val_fraction=0.05, loss_on="all", seed=0)
    return folder / "tokens"


def run_config(config: str, tokens: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / config
    worker = [str(ROOT / "bench" / "mesh_worker.py"), str(tokens), str(out), config,
              str(args.steps), str(args.d_model), str(args.layers), str(args.heads),
              str(args.batch), str(args.block)]
    launcher = ([sys.executable] if config == "none" else
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node=4"])
    result = subprocess.run([*launcher, *worker], capture_output=True, text=True, check=False,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        raise SystemExit(f"{config} failed:\n{result.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    main = next(r for r in ranks if r["rank"] == 0)
    return {"config": config, "processes": len(ranks), "tokens_per_s": main["tokens_per_s"],
            "final_loss": main["final_loss"], "collectives": main["collectives"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
            "param_bytes": max(r["param_bytes"] for r in ranks),
            "optimizer_bytes": max(r["optimizer_bytes"] for r in ranks)}


def table(results: dict[str, Any]) -> str:
    rows = results["rows"]
    one = next(r for r in rows if r["config"] == "none")
    header = ("| mesh | processes | tokens/s | vs one process | peak RSS / process (MB) | "
              "parameters / process (MB) | optimizer state / process (MB) | "
              "collectives / step: calls (payload KB) |")
    lines = [header, "|---" * 8 + "|"]
    for r in rows:
        comms = ", ".join(f"{kind} {c['calls']} ({c['bytes'] / 1e3:,.0f})"
                          for kind, c in sorted(r["collectives"].items())) or "none"
        lines.append(f"| {NAMES[r['config']]} | {r['processes']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s'] / one['tokens_per_s']:.2f}x | {r['peak_rss_mb']:,.0f} | "
                     f"{r['param_bytes'] / 1e6:.2f} | {r['optimizer_bytes'] / 1e6:.2f} | "
                     f"{comms} |")
    return "\n".join(lines)


def readme_block(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    return (f"Measured with `bench/mesh.py` on {results['date']} ({m['cores']} CPU cores, "
            f"{m['arch']}, Python {m['python']}; Llama d_model {s['d_model']}, {s['layers']} "
            f"layers, {s['heads']} heads, {s['batch']} x {s['block']} tokens a step, AdamW, "
            f"{s['steps']} steps; gloo, one thread a process, so four processes share "
            f"{m['cores']} cores):\n\n{table(results)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--write-readme", action="store_true",
                        help="write the README block bench:<name> (README.md, bench/README.md)")
    parser.add_argument("--name", default="mesh", help="the README block (default mesh)")
    args = parser.parse_args()
    if args.source:
        results = json.loads(args.source.read_text())
    else:
        work = Path(tempfile.mkdtemp(prefix="lmpipe-mesh-"))
        tokens = make_tokens(work)
        rows = [run_config(config, tokens, work, args) for config in CONFIGS]
        results = {"date": date.today().isoformat(), "machine": machine(), "rows": rows,
                   "settings": {k: getattr(args, k) for k in ("steps", "d_model", "layers",
                                                              "heads", "batch", "block")}}
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    if args.write_readme:
        write_readmes(args.name, readme_block(results))


if __name__ == "__main__":
    main()
