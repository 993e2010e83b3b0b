"""The operator freezes what start-up left on the heap (kube/run.py `freeze_heap`), so full collections walk only
what the generations brought: garbage from before is collected first, live objects are frozen, and objects made
afterwards are still collected."""

from __future__ import annotations

import gc
import weakref

from flywheel_operator.kube.run import freeze_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_start_up_objects_are_frozen_after_their_garbage_is_collected() -> None:
    garbage = _Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = _Node()
    try:
        freeze_heap()
        assert gone() is None  # collected before the freeze, not frozen for ever
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # frozen: out of every generation's walk
        later = _Node()
        later_ref = weakref.ref(later)
        del later
        gc.collect()
        assert later_ref() is None  # what comes after the freeze is collected as before
    finally:
        gc.unfreeze()
