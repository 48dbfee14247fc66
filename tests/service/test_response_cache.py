"""ResponseCache: hits, in-flight coalescing, cancellation, LRU eviction, off switch, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from service.response_cache import ResponseCache
from tests.polling import wait_until_async


class Counted:
    """Makes ``compute`` callables that count their runs; ``gated``: each run waits for ``gate``."""

    def __init__(self, *, gated: bool = False) -> None:
        self.runs = 0
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        if not gated:
            self.gate.set()

    def __call__(self, value: str) -> Callable[[], Awaitable[str]]:
        async def compute() -> str:
            self.runs += 1
            self.started.set()
            await self.gate.wait()
            return value

        return compute


async def waiting(cache: ResponseCache[str, str], count: int) -> None:
    """Until ``count`` callers are waiting on computations."""
    await wait_until_async(
        lambda: cache.stats.misses + cache.stats.coalesced >= count, what=f"{count} waiters"
    )


async def test_a_repeat_is_a_hit_and_does_not_compute() -> None:
    cache: ResponseCache[str, str] = ResponseCache(max_entries=4)
    compute = Counted()
    assert await cache.get_or_compute("k", compute("a dog")) == ("a dog", "miss")
    assert await cache.get_or_compute("k", compute("other")) == ("a dog", "hit")
    assert compute.runs == 1
    assert len(cache) == 1
    assert (cache.stats.hits, cache.stats.misses, cache.stats.coalesced) == (1, 1, 0)


async def test_identical_calls_in_flight_compute_once() -> None:
    cache: ResponseCache[str, str] = ResponseCache(max_entries=4)
    compute = Counted(gated=True)
    calls = [asyncio.create_task(cache.get_or_compute("k", compute("a dog"))) for _ in range(16)]
    await waiting(cache, 16)
    assert not any(call.done() for call in calls)
    compute.gate.set()
    results = await asyncio.gather(*calls)
    assert compute.runs == 1
    assert [value for value, _ in results] == ["a dog"] * 16
    assert sorted(lookup for _, lookup in results) == ["coalesced"] * 15 + ["miss"]
    assert await cache.get_or_compute("k", compute("x")) == ("a dog", "hit")


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    cache: ResponseCache[str, str] = ResponseCache(max_entries=4)
    compute = Counted(gated=True)
    first = asyncio.create_task(cache.get_or_compute("k", compute("a dog")))  # starts it
    others = [asyncio.create_task(cache.get_or_compute("k", compute("x"))) for _ in range(3)]
    await waiting(cache, 4)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    compute.gate.set()
    assert [value for value, _ in await asyncio.gather(*others)] == ["a dog"] * 3
    assert compute.runs == 1


async def test_the_computation_is_cancelled_once_every_waiter_left() -> None:
    cache: ResponseCache[str, str] = ResponseCache(max_entries=4)
    compute = Counted(gated=True)
    calls = [asyncio.create_task(cache.get_or_compute("k", compute("a dog"))) for _ in range(2)]
    await compute.started.wait()
    calls[0].cancel()
    await asyncio.wait([calls[0]])  # its cancellation has landed
    assert cache.in_flight == 1  # one waiter is left: the computation goes on
    calls[1].cancel()
    for call in calls:
        with pytest.raises(asyncio.CancelledError):
            await call
    await wait_until_async(lambda: not cache.in_flight, what="the computation to be cancelled")
    assert len(cache) == 0  # nothing was stored
    compute.gate.set()
    assert await cache.get_or_compute("k", compute("a cat")) == ("a cat", "miss")
    assert compute.runs == 2


async def test_the_least_recently_used_is_evicted() -> None:
    cache: ResponseCache[str, str] = ResponseCache(max_entries=2)
    compute = Counted()
    await cache.get_or_compute("a", compute("A"))
    await cache.get_or_compute("b", compute("B"))
    assert (await cache.get_or_compute("a", compute("?")))[1] == "hit"  # "b" is now oldest
    await cache.get_or_compute("c", compute("C"))
    assert len(cache) == 2
    assert await cache.get_or_compute("a", compute("?")) == ("A", "hit")
    assert await cache.get_or_compute("c", compute("?")) == ("C", "hit")
    assert await cache.get_or_compute("b", compute("B2")) == ("B2", "miss")
    assert compute.runs == 4


async def test_max_entries_zero_computes_every_time() -> None:
    cache: ResponseCache[str, str] = ResponseCache(max_entries=0)
    compute = Counted(gated=True)
    calls = [asyncio.create_task(cache.get_or_compute("k", compute("a dog"))) for _ in range(3)]
    await waiting(cache, 3)
    compute.gate.set()
    assert await asyncio.gather(*calls) == [("a dog", "miss")] * 3
    assert await cache.get_or_compute("k", compute("a dog")) == ("a dog", "miss")
    assert compute.runs == 4
    assert len(cache) == 0 and not cache.enabled


async def test_an_exception_reaches_every_waiter_and_is_not_stored() -> None:
    cache: ResponseCache[str, str] = ResponseCache(max_entries=4)
    gate = asyncio.Event()
    runs = 0

    async def failing() -> str:
        nonlocal runs
        runs += 1
        await gate.wait()
        raise ValueError("model exploded")

    calls = [asyncio.create_task(cache.get_or_compute("k", failing)) for _ in range(5)]
    await waiting(cache, 5)
    gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert runs == 1
    assert all(isinstance(r, ValueError) and str(r) == "model exploded" for r in results)
    assert len(cache) == 0
    assert await cache.get_or_compute("k", Counted()("a dog")) == ("a dog", "miss")


def test_negative_max_entries_is_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ResponseCache[str, str](max_entries=-1)
