"""Generation through each architecture's own cache (lmpipe/eval/decoders.py): cached decoding
equals recomputing the whole sequence, left padding leaves every row as it would be alone, and a
tool call spliced into one row of a batch leaves the others as they would be alone."""

import pytest
import torch

from lmpipe.core import protocol
from lmpipe.eval.decoders import decoder_for
from lmpipe.eval.generate import Sampling, generate
from lmpipe.model.build import build_model
from lmpipe.model.params import ARCHS, ModelParams
from tests.eval.tiny_models import steered


def random_model(arch: str, noise: float) -> torch.nn.Module:
    """A tiny seeded model with `noise` * N(0, 1) added to every weight: a fresh Hawk's biases
    and pad embedding are zero, which would hide what left padding does to its convolution, and
    a fresh model's greedy text repeats one token, which would hide a corrupted state."""
    params = ModelParams(arch=arch, d_model=16, n_layers=2, n_heads=2, d_state=4, max_seq_len=256)
    model = build_model(params, seed=0).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(noise * torch.randn(weight.shape, generator=generator))
    return model


def left_padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_recomputing_the_whole_sequence(arch, tokenizer):
    model = random_model(arch, noise=0.1)  # logits of order 1: float32 keeps them to 1e-6
    generator = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 256, (n,), generator=generator) for n in (3, 9, 6, 1)]
    steps = torch.randint(0, 256, (len(rows), 6), generator=generator)
    finished_after = 2  # row 0 is done after two steps: fed pads, not live, like the loop does
    decoder = decoder_for(model)
    with torch.no_grad():
        logits = [decoder.prefill(*left_padded(rows, tokenizer.pad_token_id))]
        for t in range(steps.shape[1]):
            live = torch.ones(len(rows), dtype=torch.bool)
            tokens = steps[:, t].clone()
            if t >= finished_after:
                live[0], tokens[0] = False, tokenizer.pad_token_id
            logits.append(decoder.step(tokens, live))
        for r, row in enumerate(rows):
            fed = steps[r, :finished_after] if r == 0 else steps[r]
            whole = model(input_ids=torch.cat([row, fed])[None]).logits[0, len(row) - 1:].float()
            cached = torch.stack([step[r] for step in logits[:len(fed) + 1]])
            assert (cached - whole).abs().max().item() <= 1e-5, (arch, r)
    assert decoder.next_position.tolist() == [3 + finished_after, 15, 12, 7]


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_generation_with_a_tool_call_equals_each_prompt_alone(arch, tokenizer):
    # "~" makes the model write the query "?" (a tool call); "^" makes it stop at once
    model = steered(random_model(arch, noise=1.0), tokenizer,
                    {"~": protocol.CALL, protocol.CALL: "?", "?": protocol.END, "^": protocol.EOS})
    prompts = [protocol.prompt("birth_city", "Al Bo", True) + "~",
               protocol.prompt("major", "Christina Delacroix-Evans", False) + "^",
               protocol.prompt("employer", "Zoe Young", True),
               "Hi"]

    def tool(query: str) -> str:
        return f"{len(query)} result"

    greedy = Sampling(max_new_tokens=10)
    batched = generate(model, tokenizer, prompts, greedy, tool=tool, batch_size=len(prompts))
    alone = [generate(model, tokenizer, [p], greedy, tool=tool, batch_size=1)[0] for p in prompts]
    assert [(g.ids, g.tool_calls, g.finish) for g in batched] == \
        [(g.ids, g.tool_calls, g.finish) for g in alone]
    call, stop, free, short = batched
    assert call.tool_calls == [("?", "1 result")] and len(call.turn_starts) == 2
    spliced = tokenizer(protocol.tool_continuation("1 result"), add_special_tokens=False)
    reply_end = call.turn_starts[1]
    assert call.ids[3:reply_end] == spliced["input_ids"]
    assert len(call.ids) - reply_end == 10  # sampled after the splice, by the model's own state
    assert stop.ids == [tokenizer.convert_tokens_to_ids(protocol.EOS)] and stop.finish == "stop"
    assert len(free.ids) == len(short.ids) == 10 and not free.tool_calls
    assert len(set(free.ids)) > 2 and len(set(call.ids[reply_end:])) > 2  # not one token repeated
