"""Test driver: greedy generation with a tool call by a steered tiny Llama, its blocks split over
the torchrun processes (lmpipe/train/mesh.py `tensor_parallel_inference`), or whole when run
plainly. Rank 0 writes each prompt's tokens, tool calls and finish to OUT (JSON).

usage: python generate_tp.py OUT      (or under torchrun --nproc_per_node N)
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lmpipe.core import protocol
from lmpipe.data.tokenizer import build_byte_tokenizer
from lmpipe.eval.generate import Sampling, generate
from lmpipe.train.distributed import init_distributed, shutdown
from lmpipe.train.mesh import tensor_parallel_inference
from tests.eval.test_generate_archs import random_model
from tests.eval.tiny_models import steered


def main() -> None:
    tokenizer = build_byte_tokenizer()
    dist = init_distributed()
    model = tensor_parallel_inference(random_model("llama", noise=1.0), dist)
    # "~" makes the model write the query "?" (a tool call); "^" makes it stop at once
    model = steered(model, tokenizer, {"~": protocol.CALL, protocol.CALL: "?",
                                       "?": protocol.END, "^": protocol.EOS})
    prompts = [protocol.prompt("birth_city", "Al Bo", True) + "~",
               protocol.prompt("major", "Christina Delacroix-Evans", False) + "^",
               protocol.prompt("employer", "Zoe Young", True), "Hi"]
    done = generate(model, tokenizer, prompts, Sampling(max_new_tokens=24),
                    tool=lambda query: f"{len(query)} result", batch_size=len(prompts))
    if dist.is_main:
        Path(sys.argv[1]).write_text(json.dumps(
            [{"ids": g.ids, "tool_calls": g.tool_calls, "finish": g.finish} for g in done]))
    shutdown(dist)


if __name__ == "__main__":
    main()
