"""Which student layer is compared with which teacher layer, for hidden-state and attention terms.

Layers are numbered as lmpipe/model/hidden_states.py numbers them, the same in every architecture:
0 is the embedding output, i the output of block i (1-based), L the last block (after the final
norm). A mapping is one of:

    all       block i <-> block i (equal depths only)
    last      L_s <-> L_t
    last-K    the last K blocks of each, in order
    uniform   every student block i <-> teacher block round(i * L_t / L_s)  (evenly spread)
    [[s, t], ...]  an explicit list
"""

from __future__ import annotations

from lmpipe.core.section import ConfigError
from lmpipe.distill.params import DistillParams
from lmpipe.distill.terms import HIDDEN_STATE_TERMS


def layer_pairs(spec: str | list[list[int]], student_layers: int,
                teacher_layers: int) -> list[tuple[int, int]]:
    """The (student, teacher) hidden-state index pairs `spec` names (errors name distill.layers)."""
    where = f"distill.layers = {spec!r}"
    if isinstance(spec, list):
        pairs = [(int(s), int(t)) for s, t in spec]
        for s, t in pairs:
            if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
                raise ConfigError(f"{where}: pair [{s}, {t}] out of range; the student has layers "
                                  f"0..{student_layers}, the teacher 0..{teacher_layers}")
        return pairs
    if spec == "all":
        if student_layers != teacher_layers:
            raise ConfigError(f"{where}: the student has {student_layers} blocks, the teacher "
                              f"{teacher_layers}; use uniform, last-K or an explicit list")
        return [(i, i) for i in range(1, student_layers + 1)]
    if spec == "last":
        return [(student_layers, teacher_layers)]
    if spec.startswith("last-"):
        k = int(spec.split("-", 1)[1])
        if k > min(student_layers, teacher_layers):
            raise ConfigError(f"{where}: asks for {k} layers, the student has {student_layers} "
                              f"and the teacher {teacher_layers}")
        return [(student_layers - j, teacher_layers - j) for j in reversed(range(k))]
    if spec == "uniform":
        return [(i, max(1, round(i * teacher_layers / student_layers)))
                for i in range(1, student_layers + 1)]
    raise ConfigError(f"{where}: expected all, last, last-K, uniform or [[student, teacher], ...]")


def teacher_layers_used(dp: DistillParams, student_layers: int,
                        teacher_layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(hidden-state layers, attention blocks) of the teacher that `dp`'s objective compares:
    what `teacher_cache` keeps when its `hidden_layers` / `attention_layers` are `auto`."""
    hidden_terms = [t for t in HIDDEN_STATE_TERMS if dp.objective.get(t, 0) > 0]
    attention = dp.objective.get("attention_kl", 0) > 0
    if not hidden_terms and not attention:
        return (), ()
    teachers = sorted({t for _, t in layer_pairs(dp.layers, student_layers, teacher_layers)})
    return (tuple(teachers) if hidden_terms else (),
            tuple(t for t in teachers if t > 0) if attention else ())
