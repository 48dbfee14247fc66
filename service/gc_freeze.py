"""Keep the cyclic garbage collector off what a long-lived server built at start-up.

The model, vocabulary, app and libraries live as long as the process, yet every full (generation
2) collection walks all of them holding the GIL, stopping every thread, the event loop included:
pauses that land in the tail latency of every answer, refusals too. ``freeze_long_lived`` moves
them to the permanent generation; objects created later are collected as before.

Freezing also empties what CPython counts as long-lived, and it holds full collections back only
while few objects were promoted *relative to that count*; so after freezing, full collections
over the requests in flight would come ten times as often. The third threshold is raised to
``FULL_COLLECTION_THRESHOLD`` while frozen to space them out again (docs/operations.md).
"""

from __future__ import annotations

import gc

FULL_COLLECTION_THRESHOLD = 100
"""Generation-1 collections between full collections while frozen (CPython's default: 10)."""
_SAVED_THRESHOLDS: list[int] = []


def freeze_long_lived() -> None:
    """Collect once, freeze what is left, and space full collections out (undo: ``thaw``)."""
    gc.collect()
    gc.freeze()
    if not _SAVED_THRESHOLDS:
        _SAVED_THRESHOLDS[:] = gc.get_threshold()
    gen0, gen1, _ = _SAVED_THRESHOLDS
    gc.set_threshold(gen0, gen1, FULL_COLLECTION_THRESHOLD)


def thaw() -> None:
    """Undo ``freeze_long_lived``: unfreeze, restore the thresholds it replaced."""
    gc.unfreeze()
    if _SAVED_THRESHOLDS:
        gc.set_threshold(*_SAVED_THRESHOLDS)
        _SAVED_THRESHOLDS.clear()
