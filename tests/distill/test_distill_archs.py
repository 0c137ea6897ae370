"""Distillation across architectures: a layer number means the same place in llama, mamba,
mamba2 and hawk (checked against forward hooks on the blocks), a recurrent student learns from a llama
teacher (and a llama student from a recurrent teacher) through the cache and live alike, and
attention_kl is refused when a side has no attention."""

import numpy as np
import pytest
import torch

from lmpipe.core.section import ConfigError
from lmpipe.data.tokenizer import VOCAB_SIZE
from lmpipe.data.tokens import TokenSplit
from lmpipe.distill.cache.format import CacheSpec
from lmpipe.distill.cache.read import TeacherCache
from lmpipe.distill.cache.write import write_cache
from lmpipe.distill.objective import build_objective
from lmpipe.distill.params import DistillParams
from lmpipe.distill.teacher import LiveTeacher
from lmpipe.model.build import build_model
from lmpipe.model.hidden_states import layer_states
from lmpipe.model.params import ModelParams
from lmpipe.train.params import TrainParams
from tests.distill.cache_vs_live import cache_and_live_runs, losses

FINAL_NORM = {"llama": "norm", "mamba": "norm_f", "mamba2": "norm_f", "hawk": "final_norm"}


def tiny(arch: str, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    return build_model(ModelParams(arch=arch, d_model=16, n_layers=layers, d_state=4, n_heads=2,
                                   max_seq_len=256), seed=seed)


@pytest.mark.parametrize("arch", ["llama", "mamba", "mamba2", "hawk"])
def test_layer_i_is_the_output_of_block_i_in_every_arch(arch):
    """Layer 0: block 1's input; layer i < L: block i's output; layer L: the final norm's."""
    model = tiny(arch, layers=3).eval()
    base = model.base_model
    seen: dict[int, torch.Tensor] = {}
    base.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.__setitem__(0, (args or (kwargs["hidden_states"],))[0]),
        with_kwargs=True)
    for i, block in enumerate(base.layers, start=1):
        block.register_forward_hook(lambda module, args, out, i=i: seen.__setitem__(
            i, out[0] if isinstance(out, tuple) else out))
    getattr(base, FINAL_NORM[arch]).register_forward_hook(
        lambda module, args, out: seen.__setitem__("norm", out))
    ids = torch.tensor([[256, 5, 6, 7, 8, 9], [256, 10, 11, 12, 13, 14]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        states = layer_states(model, ids, out)
    assert len(states) == 4
    for layer, expected in ((0, seen[0]), (1, seen[1]), (2, seen[2]), (3, seen["norm"])):
        torch.testing.assert_close(states[layer], expected, rtol=0, atol=0)
    if arch in ("llama", "mamba2"):  # their own output, untouched
        assert states is out.hidden_states


def distill_curves(teacher: torch.nn.Module, student_arch: str, tiny_tokens, tokenizer,
                   folder) -> list[list[float]]:
    """Eight steps of forward KL + CE + hidden MSE (student block 1 <-> teacher block 1, the
    final states) from a k = V fp32 cache of `teacher`, then from the live `teacher`."""
    split = TokenSplit.open(tiny_tokens, "train")
    write_cache(teacher.eval(), split, CacheSpec(VOCAB_SIZE, "fp32", hidden_layers=(1, 2),
                                                 hidden_dtype="fp32"),
                tokenizer.pad_token_id, folder / "cache", 5, {})
    tp = TrainParams(steps=8, batch_size=4, warmup_steps=1, log_every=1, eval_every=8, lr=3e-3)
    d = DistillParams(objective={"forward_kl": 0.5, "ce": 0.5, "hidden_mse": 1.0},
                      layers="uniform", projector="linear", train=tp)
    runs = cache_and_live_runs(TeacherCache.open(folder / "cache"), teacher,
                               lambda: tiny(student_arch, seed=1), d, tiny_tokens,
                               tokenizer.pad_token_id, folder)
    for records in runs:
        assert {"loss_forward_kl", "loss_ce", "loss_hidden_mse"} <= set(records[-2])
    return [losses(records) for records in runs]


@pytest.mark.parametrize("teacher_arch, student_arch",
                         [("llama", "mamba"), ("llama", "hawk"), ("mamba", "llama"),
                          ("hawk", "mamba"), ("llama", "mamba2"), ("mamba2", "hawk")])
def test_a_student_of_another_arch_learns_from_the_cache_as_from_the_live_teacher(
        teacher_arch, student_arch, tiny_tokens, tokenizer, tmp_path):
    curves = distill_curves(tiny(teacher_arch), student_arch, tiny_tokens, tokenizer, tmp_path)
    assert len(curves[0]) == 8 and curves[0][-1] < curves[0][0] - 0.05
    np.testing.assert_allclose(curves[0], curves[1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("teacher_arch, student_arch, side",
                         [("llama", "mamba", "student"), ("hawk", "llama", "teacher")])
def test_attention_kl_is_refused_for_an_attention_free_side(teacher_arch, student_arch, side):
    d = DistillParams(objective={"forward_kl": 1.0, "attention_kl": 1.0}, layers="last")
    with pytest.raises(ConfigError, match=rf"distill\.objective\.attention_kl = 1: the {side}"):
        build_objective(d, LiveTeacher(tiny(teacher_arch)), tiny(student_arch, seed=1))
