"""frozen_heap (lmpipe/eval/heap.py): collections inside walk only what was made inside, and
everything goes back to the collector afterwards."""

from __future__ import annotations

import gc
import weakref

from lmpipe.eval.heap import frozen_heap


class Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_garbage_from_before_waits_and_garbage_from_inside_is_collected():
    assert gc.get_freeze_count() == 0
    old = Cycle()
    old_ref = weakref.ref(old)
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        del old
        new = Cycle()
        new_ref = weakref.ref(new)
        del new
        gc.collect()
        assert new_ref() is None  # made inside: walked and freed
        assert old_ref() is not None  # from before: frozen, not walked
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None  # back with the collector: freed


def test_a_callers_own_freeze_is_kept():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        # not equality: another thread (xdist's) may free a frozen object meanwhile; a
        # frozen_heap that unfroze the caller's heap would leave none frozen at all
        with frozen_heap():
            assert gc.get_freeze_count() > frozen // 2
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()
