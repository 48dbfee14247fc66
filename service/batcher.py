"""A dynamic micro-batcher: one bounded queue, one flush loop, cancel-safe futures.

Callers ``await batcher.submit(item, deadline=...)``; the flush loop groups queued items into
batches and hands each batch to ``run_batch(items) -> [result | exception, ...]`` (one entry per
item, in order) as its own task, with at most ``max_concurrent_batches`` running.

When a batch closes:

* at ``max_batch_size`` items;
* at once when the model is idle (no batch running): a lone request never waits for company, and
  under load batches grow by themselves while the previous one runs;
* otherwise (a batch is running and a slot is free) ``max_wait_s`` after its first item arrived,
  measured on the loop's monotonic clock from one deadline computed once.

Back-pressure and failure rules: a full queue raises ``Overloaded`` (503 + Retry-After) without
blocking; a request past its deadline raises ``DeadlineExceeded`` (504) even while its batch is
running, and is dropped before inference if still queued; a cancelled caller (client gone) is
dropped before inference and its siblings are still served; results are set only on futures not
yet done; one item's exception fails only that item; an exception of the whole ``run_batch``
fails that batch only; the flush loop logs any error and keeps going. ``drain()`` stops
accepting and waits for queued and running work. Refusals are raised, not counted: whoever answers
the caller counts them, once.

It knows nothing of HTTP or ONNX Runtime: the model work (blocking) belongs in ``run_batch``,
which must hand it to a worker thread.

Kept in one module (about 320 lines): the queue, the flush loop and the futures' settlement
share one set of invariants (who may complete a future, when a slot is free), read together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from service.errors import DeadlineExceeded, NotReady, Overloaded

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class BatchObserver(Protocol):
    """What the batcher reports (the service's ``Metrics`` implements it)."""

    def queue_changed(self, queued: int, running: int) -> None: ...

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None: ...


class NullObserver:
    def queue_changed(self, queued: int, running: int) -> None:
        pass

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        pass


@dataclass(eq=False)
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    deadline: float | None
    enqueued: float
    """``loop.time()`` at submission: the one record of when the item was queued."""
    waited: float = 0.0
    """Seconds from submission to the start of the item's batch."""


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
        max_concurrent_batches: int = 1,
        retry_after_s: int = 1,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_concurrent_batches < 1 or max_wait_s < 0:
            raise ValueError("batch size, queue size and concurrency must be >= 1, wait >= 0")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue_size = queue_size
        self._max_concurrent = max_concurrent_batches
        self._retry_after_s = retry_after_s
        self._observer: BatchObserver = observer or NullObserver()
        self._pending: deque[_Entry[T, R]] = deque()
        self._collecting: list[_Entry[T, R]] = []
        self._running_items = 0
        self._running_batches = 0
        self._accepting = True
        self._wake = asyncio.Event()  # an item arrived or a batch finished
        self._changed = asyncio.Event()  # queued or running counts went down
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._loop_task: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()

    # --- state ----
    @property
    def queued(self) -> int:
        """Items waiting for a batch (including those of the batch being collected)."""
        return len(self._pending) + len(self._collecting)

    @property
    def running(self) -> int:
        """Items in batches currently running."""
        return self._running_items

    @property
    def accepting(self) -> bool:
        return self._accepting

    # --- lifecycle ----
    def start(self) -> None:
        """Start the flush loop (call from the event loop that will submit)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._supervise(), name="micro-batcher"
            )

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new items; wait for queued and running ones. True if all finished in time."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.queued or self._running_items:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def stop(self) -> None:
        """Stop the flush loop; anything still queued or running fails with ``NotReady``."""
        self._accepting = False
        tasks = list(self._batch_tasks)
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        stopped = NotReady("the service stopped before this request was run", draining=True)
        for entry in [*self._pending, *self._collecting]:
            if not entry.future.done():
                entry.future.set_exception(stopped)
        self._pending.clear()
        self._collecting.clear()

    # --- callers ----
    async def submit(self, item: T, *, deadline: float | None = None) -> R:
        """Queue ``item`` and wait for its result. ``deadline`` is on ``loop.time()``."""
        result, _ = await self.submit_timed(item, deadline=deadline)
        return result

    async def submit_timed(self, item: T, *, deadline: float | None = None) -> tuple[R, float]:
        """``submit``, also returning the seconds the item waited for its batch to start."""
        if not self._accepting:
            raise NotReady(
                "the service is shutting down", retry_after_s=self._retry_after_s, draining=True
            )
        if self.queued >= self._queue_size:
            raise Overloaded(
                f"request queue is full ({self._queue_size} waiting)",
                retry_after_s=self._retry_after_s,
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("request deadline passed before it was queued")
        future: asyncio.Future[R] = loop.create_future()
        entry = _Entry(item, future, deadline, now)
        self._pending.append(entry)
        self._wake.set()
        self._observer.queue_changed(self.queued, self._running_items)
        try:
            timeout = None if deadline is None else deadline - now
            await asyncio.wait((future,), timeout=timeout)
        except asyncio.CancelledError:
            self._abandon(entry)
            raise
        if not future.done():
            self._abandon(entry)
            raise DeadlineExceeded(f"no answer within the request deadline ({timeout:.3g} s)")
        return future.result(), entry.waited

    def _abandon(self, entry: _Entry[T, R]) -> None:
        entry.future.cancel()
        try:
            self._pending.remove(entry)
        except ValueError:
            return  # already taken into a batch: dropped there or its result is ignored
        self._changed.set()
        self._observer.queue_changed(self.queued, self._running_items)

    # --- the flush loop ----
    async def _supervise(self) -> None:
        while True:
            try:
                await self._flush_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("micro-batcher flush loop failed; continuing")
                await asyncio.sleep(0)

    async def _flush_once(self) -> None:
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        await self._slots.acquire()
        if not self._pending:  # everything queued was abandoned while we waited for a slot
            self._slots.release()
            return
        batch = self._collecting
        try:
            await self._collect(batch)
            live = self._select_live(batch)
            self._collecting = []
            self._changed.set()
            if live:
                now = asyncio.get_running_loop().time()
                for entry in live:
                    entry.waited = now - entry.enqueued
                self._observer.batch_started(len(live), [e.waited for e in live])
        except BaseException as exc:
            self._collecting = []
            failure = exc if isinstance(exc, Exception) else NotReady("batcher stopped")
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(failure)
            self._slots.release()
            raise
        if not live:
            self._slots.release()
            return
        self._running_batches += 1
        self._running_items += len(live)
        self._observer.queue_changed(self.queued, self._running_items)
        task = asyncio.get_running_loop().create_task(self._execute(live))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _collect(self, batch: list[_Entry[T, R]]) -> None:
        """Fill ``batch`` from the queue until it is full, the model is idle or time is up."""
        loop = asyncio.get_running_loop()
        close_at = self._pending[0].enqueued + self._max_wait_s
        while len(batch) < self._max_batch_size:
            if self._pending:
                batch.append(self._pending.popleft())
                continue
            if self._running_batches == 0 or not self._accepting:
                return
            remaining = close_at - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _select_live(self, batch: list[_Entry[T, R]]) -> list[_Entry[T, R]]:
        """Drop cancelled callers and expired requests before inference."""
        now = asyncio.get_running_loop().time()
        live: list[_Entry[T, R]] = []
        for entry in batch:
            if entry.future.done():
                continue  # caller gone or timed out: counted in submit()
            if entry.deadline is not None and now >= entry.deadline:
                entry.future.set_exception(
                    DeadlineExceeded("request deadline passed while it was queued")
                )
                continue
            live.append(entry)
        return live

    async def _execute(self, live: list[_Entry[T, R]]) -> None:
        try:
            try:
                results = await self._run_batch([e.item for e in live])
                if len(results) != len(live):
                    raise RuntimeError(
                        f"run_batch returned {len(results)} results for {len(live)} items"
                    )
            except asyncio.CancelledError:
                stopped = NotReady("the service stopped during this request", draining=True)
                self._settle(live, [stopped] * len(live))
                raise
            except Exception as exc:
                log.exception("batch of %d failed", len(live))
                results = [exc] * len(live)
            self._settle(live, results)
        finally:
            self._running_batches -= 1
            self._running_items -= len(live)
            self._slots.release()
            self._wake.set()
            self._changed.set()
            self._observer.queue_changed(self.queued, self._running_items)

    @staticmethod
    def _settle(live: list[_Entry[T, R]], results: Sequence[R | BaseException]) -> None:
        for entry, result in zip(live, results, strict=True):
            if entry.future.done():
                continue  # caller cancelled or timed out meanwhile
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)
