"""The micro-batcher with a fake runner: sizes, timing, cancellation, deadlines, back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from service.batcher import MicroBatcher
from service.errors import DeadlineExceeded, NotReady, Overloaded
from tests.polling import wait_until_async


class FakeRunner:
    """Records every batch; when gated, each batch waits for ``release_one()`` or ``open()``."""

    def __init__(self, *, gated: bool = False) -> None:
        self.batches: list[list[int]] = []
        self._open = not gated
        self._permits = asyncio.Semaphore(0)
        self.started = asyncio.Event()
        self.fail_items: set[int] = set()
        self.fail_batch = False
        self.in_flight = 0
        self.max_in_flight = 0

    def release_one(self) -> None:
        self._permits.release()

    def open(self) -> None:
        self._open = True
        for _ in range(100):
            self._permits.release()

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        self.started.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if not self._open:
                await self._permits.acquire()
        finally:
            self.in_flight -= 1
        if self.fail_batch:
            raise RuntimeError("model crashed")
        return [ValueError(f"bad {i}") if i in self.fail_items else i * 10 for i in items]


class Recorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.fail_next_batch = False

    def queue_changed(self, queued: int, running: int) -> None:
        pass

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        if self.fail_next_batch:
            self.fail_next_batch = False
            raise RuntimeError("observer blew up")
        self.sizes.append(size)


def make(
    runner: FakeRunner,
    *,
    max_batch_size: int = 4,
    max_wait_s: float = 0.05,
    queue_size: int = 64,
    concurrency: int = 1,
    observer: Recorder | None = None,
) -> MicroBatcher[int, int]:
    batcher: MicroBatcher[int, int] = MicroBatcher(
        runner,
        max_batch_size=max_batch_size,
        max_wait_s=max_wait_s,
        queue_size=queue_size,
        max_concurrent_batches=concurrency,
        observer=observer,
    )
    batcher.start()
    return batcher


@pytest.fixture
async def cleanup() -> AsyncIterator[list[MicroBatcher[int, int]]]:
    made: list[MicroBatcher[int, int]] = []
    yield made
    for batcher in made:
        await batcher.stop()


async def test_idle_model_runs_a_lone_request_at_once(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner()
    batcher = make(runner, max_wait_s=5.0)  # a long wait that must NOT be applied when idle
    cleanup.append(batcher)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await batcher.submit(7) == 70
    assert loop.time() - start < 0.5
    assert runner.batches == [[7]]


async def test_batches_grow_while_the_model_is_busy_and_close_on_size(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner, max_batch_size=4, max_wait_s=5.0)
    cleanup.append(batcher)
    first = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()  # batch [0] is running and held
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 10)]
    await wait_until_async(lambda: batcher.queued == 9, what="9 queued")
    runner.open()
    results = await asyncio.gather(first, *rest)
    assert results == [i * 10 for i in range(10)]
    assert [len(b) for b in runner.batches] == [1, 4, 4, 1]
    assert [x for b in runner.batches for x in b] == list(range(10))  # FIFO


async def test_closes_on_time_when_a_slot_is_free_but_model_busy(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner, max_batch_size=8, max_wait_s=0.1, concurrency=2)
    cleanup.append(batcher)
    first = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    second = asyncio.create_task(batcher.submit(1))
    # opened by the timer, not by size
    await wait_until_async(lambda: len(runner.batches) == 2, what="a second batch")
    waited = loop.time() - t0
    assert 0.08 <= waited < 1.0, waited
    assert runner.batches[1] == [1]
    runner.open()
    assert list(await asyncio.gather(first, second)) == [0, 10]


async def test_items_arriving_within_the_wait_join_the_batch(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner, max_batch_size=8, max_wait_s=0.2, concurrency=2)
    cleanup.append(batcher)
    first = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()
    later = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.02)  # item 3 arrives 20 ms into the 200 ms wait (a timed arrival)
    later.append(asyncio.create_task(batcher.submit(3)))
    await wait_until_async(lambda: len(runner.batches) == 2, what="a second batch")
    assert runner.batches[1] == [1, 2, 3]
    runner.open()
    assert await asyncio.gather(first, *later) == [0, 10, 20, 30]


async def test_cancelled_caller_is_dropped_and_siblings_served(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner(gated=True)
    recorder = Recorder()
    batcher = make(runner, observer=recorder)
    cleanup.append(batcher)
    first = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()
    queued = {i: asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)}
    await wait_until_async(lambda: batcher.queued == 3, what="3 queued")
    queued[2].cancel()
    await asyncio.wait([queued[2]])  # the cancellation has reached the batcher
    runner.open()
    assert await first == 0
    assert await queued[1] == 10
    assert await queued[3] == 30
    with pytest.raises(asyncio.CancelledError):
        await queued[2]
    assert runner.batches == [[0], [1, 3]]  # never ran the cancelled item
    assert recorder.sizes == [1, 2]


async def test_cancel_during_a_running_batch_leaves_siblings_served(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner)
    cleanup.append(batcher)
    tasks = [asyncio.create_task(batcher.submit(0))]
    await runner.started.wait()
    tasks += [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await wait_until_async(lambda: batcher.queued == 2, what="2 queued")
    runner.release_one()  # batch [0] finishes, batch [1, 2] starts and is held
    await wait_until_async(
        lambda: len(runner.batches) == 2 and batcher.running == 2, what="the second batch running"
    )
    tasks[1].cancel()
    await asyncio.wait([tasks[1]])  # the cancellation has reached the batcher
    runner.open()  # its batch is running: the result is discarded, the sibling gets its own
    assert await tasks[2] == 20
    assert await tasks[0] == 0
    assert tasks[1].cancelled()


async def test_deadline_expires_while_queued(cleanup: list[MicroBatcher[int, int]]) -> None:
    runner = FakeRunner(gated=True)
    recorder = Recorder()
    batcher = make(runner, observer=recorder)
    cleanup.append(batcher)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()
    with pytest.raises(DeadlineExceeded) as info:
        await batcher.submit(1, deadline=loop.time() + 0.05)
    assert info.value.reason == "timeout"  # counted as such by whoever answers the caller
    assert batcher.queued == 0  # the expired item left the queue
    runner.open()
    assert await first == 0
    assert await batcher.submit(2) == 20
    assert runner.batches == [[0], [2]]  # the expired item never reached the model
    assert recorder.sizes == [1, 1]


async def test_deadline_fires_while_its_batch_is_running(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner)
    cleanup.append(batcher)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(1, deadline=start + 0.05)
    assert loop.time() - start < 1.0
    runner.open()
    assert await batcher.submit(2) == 20


async def test_full_queue_is_refused_at_once(cleanup: list[MicroBatcher[int, int]]) -> None:
    runner = FakeRunner(gated=True)
    recorder = Recorder()
    batcher = make(runner, max_batch_size=2, queue_size=2, observer=recorder)
    cleanup.append(batcher)
    running = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()
    waiting = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await wait_until_async(lambda: batcher.queued == 2, what="2 queued")
    with pytest.raises(Overloaded) as info:
        await batcher.submit(3)
    assert info.value.headers["Retry-After"] == "1"
    assert info.value.reason == "queue_full"
    runner.open()
    assert await asyncio.gather(running, *waiting) == [0, 10, 20]


async def test_one_failing_item_fails_only_itself(cleanup: list[MicroBatcher[int, int]]) -> None:
    runner = FakeRunner(gated=True)
    runner.fail_items = {2}
    batcher = make(runner)
    cleanup.append(batcher)
    first = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()
    tasks = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
    await wait_until_async(lambda: batcher.queued == 3, what="3 queued")
    runner.open()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert results[:2] == [0, 10] and results[3] == 30
    assert isinstance(results[2], ValueError)
    assert runner.batches[1] == [1, 2, 3]


async def test_a_crashing_batch_fails_that_batch_only(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner()
    runner.fail_batch = True
    batcher = make(runner)
    cleanup.append(batcher)
    with pytest.raises(RuntimeError, match="model crashed"):
        await batcher.submit(1)
    runner.fail_batch = False
    assert await batcher.submit(2) == 20


async def test_flush_loop_survives_an_internal_error(
    cleanup: list[MicroBatcher[int, int]], caplog: pytest.LogCaptureFixture
) -> None:
    runner = FakeRunner()
    recorder = Recorder()
    recorder.fail_next_batch = True
    batcher = make(runner, observer=recorder)
    cleanup.append(batcher)
    with pytest.raises(RuntimeError, match="observer blew up"):
        await asyncio.wait_for(batcher.submit(1), 2)  # failed, not left hanging
    assert "flush loop failed" in caplog.text
    assert await asyncio.wait_for(batcher.submit(2), 2) == 20  # the loop kept going


async def test_drain_finishes_queued_and_running_work_and_refuses_new(
    cleanup: list[MicroBatcher[int, int]],
) -> None:
    runner = FakeRunner(gated=True)
    recorder = Recorder()
    batcher = make(runner, max_batch_size=2, observer=recorder)
    cleanup.append(batcher)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await wait_until_async(
        lambda: batcher.running == 2 and batcher.queued == 3, what="2 running, 3 queued"
    )
    drain = asyncio.create_task(batcher.drain(5.0))
    await wait_until_async(lambda: not batcher.accepting, what="the drain started")
    with pytest.raises(NotReady) as info:
        await batcher.submit(99)
    assert info.value.reason == "draining"
    assert not drain.done()
    runner.open()
    assert await drain is True
    assert await asyncio.gather(*tasks) == [0, 10, 20, 30, 40]


async def test_drain_times_out_when_work_is_stuck(cleanup: list[MicroBatcher[int, int]]) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner)
    cleanup.append(batcher)
    task = asyncio.create_task(batcher.submit(1))
    await runner.started.wait()
    assert await batcher.drain(0.05) is False
    await batcher.stop()
    with pytest.raises(NotReady):
        await task


async def test_concurrent_batches_are_bounded(cleanup: list[MicroBatcher[int, int]]) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner, max_batch_size=1, concurrency=2)
    cleanup.append(batcher)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]
    await wait_until_async(lambda: batcher.running == 2, what="two batches running")
    assert len(runner.batches) == 2 and batcher.queued == 2
    runner.release_one()  # the first batch ends: exactly one more takes its slot
    assert await tasks[0] == 0
    await wait_until_async(lambda: len(runner.batches) == 3, what="a third batch")
    assert batcher.running == 2 and batcher.queued == 1
    runner.open()
    assert await asyncio.gather(*tasks) == [0, 10, 20, 30]
    assert runner.max_in_flight == 2  # never more at once, all along


async def test_abandoned_while_waiting_for_a_slot_is_quietly_skipped(
    cleanup: list[MicroBatcher[int, int]], caplog: pytest.LogCaptureFixture
) -> None:
    runner = FakeRunner(gated=True)
    batcher = make(runner)
    cleanup.append(batcher)
    first = asyncio.create_task(batcher.submit(0))
    await runner.started.wait()
    second = asyncio.create_task(batcher.submit(1))
    await wait_until_async(lambda: batcher.queued == 1, what="1 queued")
    second.cancel()  # the flush loop is waiting for the busy slot meanwhile
    await wait_until_async(lambda: batcher.queued == 0, what="the abandoned item gone")
    runner.open()
    assert await first == 0
    assert await batcher.submit(2) == 20
    assert runner.batches == [[0], [2]]
    assert "flush loop failed" not in caplog.text
