"""A bounded LRU of computed answers with in-flight coalescing, keyed by content.

Rule: a key seen before is answered from memory ("hit"); a key being computed now is joined
("coalesced"); otherwise this call starts the computation ("miss"). Why: a caption depends only
on (image sha256, model version, decoding options), so a repeat need not reach the model, and a
burst of identical uploads runs it once.

- The computation runs as its own task, shielded from each waiter: a caller that gives up
  (cancelled) does not cancel it for the others; once every waiter has gone it is cancelled,
  like the work of a client that disconnected (the model skips it).
- An exception is raised to every waiter of that computation and is not stored (the next call
  computes again).
- ``max_entries`` bounds memory (least recently used evicted first); ``0`` turns the cache off:
  every call computes, nothing is stored or coalesced.

HTTP-free and model-free: ``compute`` is any ``async () -> V``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Lookup = Literal["hit", "coalesced", "miss"]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    coalesced: int = 0


class ResponseCache(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._in_flight: dict[K, asyncio.Task[V]] = {}
        self._waiters: dict[K, int] = {}

    def __len__(self) -> int:
        """Stored answers (computations in flight not included)."""
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        """False when ``max_entries`` is 0: every call computes."""
        return self.max_entries > 0

    @property
    def in_flight(self) -> int:
        """Computations running now."""
        return len(self._in_flight)

    async def get_or_compute(self, key: K, compute: Callable[[], Awaitable[V]]) -> tuple[V, Lookup]:
        if not self.enabled:
            self.stats.misses += 1
            return await compute(), "miss"
        if key in self._entries:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return self._entries[key], "hit"
        task = self._in_flight.get(key)
        lookup: Lookup
        if task is None:
            self.stats.misses += 1
            lookup = "miss"
            task = asyncio.ensure_future(compute())
            self._in_flight[key] = task
            # registered before any waiter's: the value is stored before a waiter resumes
            task.add_done_callback(lambda done: self._settle(key, done))
        else:
            self.stats.coalesced += 1
            lookup = "coalesced"
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task), lookup
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                if not task.done():
                    task.cancel()  # nobody wants the answer any more

    def _settle(self, key: K, task: asyncio.Task[V]) -> None:
        """Forget the computation; store its value if it produced one."""
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if task.cancelled() or task.exception() is not None:  # marks the exception retrieved
            return
        self._entries[key] = task.result()
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
