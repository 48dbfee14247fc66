"""The batch function the micro-batcher runs: encode a stacked batch, decode it all at once.

Blocking ONNX Runtime work runs in a dedicated thread pool (one thread per concurrent batch), so
the event loop keeps accepting and decoding requests meanwhile. Those threads run at a lower OS
priority (``lower_thread_priority``): on a small CPU the event loop then answers, and refuses,
requests while batches compute, rather than after. If a whole batch fails, each item is retried
alone so that one bad item fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.decoding import DecodeRequest
from service.metrics import Metrics
from service.model import Caption, CaptionModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CaptionJob:
    pixels: NDArray[np.float32]
    """One normalised image in the encoder's layout."""
    request: DecodeRequest


@dataclass(frozen=True)
class CaptionOutcome:
    captions: list[Caption]
    encode_s: float
    decode_s: float
    batch_size: int


def lower_thread_priority(levels: int) -> int | None:
    """Lower the calling thread's scheduling priority by ``levels`` nice levels (capped at 19);
    return its new nice value, or None where per-thread priorities do not exist (non-Linux) or
    ``levels`` is 0. Raising nice needs no privilege; the process's other threads keep theirs."""
    if levels <= 0 or not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()  # on Linux a thread id is a valid PRIO_PROCESS target
    nice = min(19, os.getpriority(os.PRIO_PROCESS, thread) + levels)
    try:
        os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError:
        log.warning("could not lower the model thread's priority to nice %d", nice)
        return None
    return nice


class BatchRunner:
    """``await pipeline(jobs)`` -> one ``CaptionOutcome`` or exception per job, in order."""

    def __init__(
        self, model: CaptionModel, metrics: Metrics | None, *, threads: int = 1, nice: int = 0
    ) -> None:
        self.model = model
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="model",
            initializer=lower_thread_priority,
            initargs=(nice,),
        )

    async def __call__(self, jobs: list[CaptionJob]) -> Sequence[CaptionOutcome | BaseException]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, jobs)

    def run_sync(self, jobs: list[CaptionJob]) -> Sequence[CaptionOutcome | BaseException]:
        """The same work on the calling thread (warm-up, benchmarks)."""
        return self._run(jobs)

    def _run(self, jobs: list[CaptionJob]) -> Sequence[CaptionOutcome | BaseException]:
        try:
            return self._together(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                log.exception("caption batch of 1 failed")
                return [exc]
            log.exception("caption batch of %d failed; retrying its items one by one", len(jobs))
        results: list[CaptionOutcome | BaseException] = []
        for job in jobs:
            try:
                results.extend(self._together([job]))
            except Exception as exc:
                results.append(exc)
        return results

    def _together(self, jobs: list[CaptionJob]) -> list[CaptionOutcome]:
        images = np.stack([job.pixels for job in jobs])
        t0 = time.perf_counter()
        features = self.model.encode(images)
        t1 = time.perf_counter()
        captions = self.model.caption(features, [job.request for job in jobs])
        t2 = time.perf_counter()
        if self._metrics is not None:
            self._metrics.inference.labels(stage="encode").observe(t1 - t0)
            self._metrics.inference.labels(stage="decode").observe(t2 - t1)
        return [
            CaptionOutcome(
                captions=caps,
                encode_s=t1 - t0,
                decode_s=t2 - t1,
                batch_size=len(jobs),
            )
            for job, caps in zip(jobs, captions, strict=True)
        ]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
