"""Clients that hang up while their image waits in the queue: the work is skipped, nobody else
notices.

A real uvicorn (in-process, so the batcher's metrics are read directly) serves the heavy test
bundle one batch at a time; stayers fill the queue, then leavers queue behind them and close
their sockets. Every leaver is counted ``cancelled`` and never reaches the model (images run ==
stayers), every stayer gets its caption, and nothing stays pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.polling import wait_until, wait_until_async
from tests.reliability.conftest import assert_healthy
from tests.service.conftest import RunningServer

pytestmark = pytest.mark.e2e

STAYERS = 40  # enough queued work that the leavers surely queue behind it on a busy box
LEAVERS = 5


def _queued(running: RunningServer) -> float:
    return running.sample("caption_queue_depth") + running.sample("caption_inflight_requests")


async def _scenario(running: RunningServer, jpeg: bytes) -> list[httpx.Response]:
    port = int(running.url.rsplit(":", 1)[1])
    head = (
        "POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(jpeg)}\r\n\r\n"
    ).encode()
    limits = httpx.Limits(max_connections=STAYERS)
    async with httpx.AsyncClient(base_url=running.url, timeout=60, limits=limits) as client:
        stayers = [
            asyncio.create_task(
                client.post("/caption", content=jpeg, headers={"Content-Type": "image/jpeg"})
            )
            for _ in range(STAYERS)
        ]
        # the stayers are queued, running or (on a fast box, the first ones) already answered
        await wait_until_async(
            lambda: _queued(running) + sum(t.done() for t in stayers) >= STAYERS - 1,
            what="the stayers queued",
            timeout=60,
            interval=0.002,
        )
        leavers: list[asyncio.StreamWriter] = []
        try:
            for _ in range(LEAVERS):
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                leavers.append(writer)
                writer.write(head + jpeg)
                await writer.drain()
            # the leavers are queued too: stayers keep finishing meanwhile, so count the ones
            # already answered (a counter that only grows) beside what is queued or running
            await wait_until_async(
                lambda: _queued(running) + sum(t.done() for t in stayers) >= STAYERS - 1 + LEAVERS,
                what="the leavers queued",
                timeout=60,
                interval=0.002,
            )
            assert running.sample("caption_batch_size_sum") < STAYERS - 2, "queue drained too fast"
        finally:
            for writer in leavers:  # hang up while queued (and never leak a socket)
                writer.close()
        return await asyncio.gather(*stayers)


def test_clients_leaving_while_queued_are_skipped(
    server: Callable[..., RunningServer], heavy_bundle: Path, jpeg: bytes
) -> None:
    running = server(
        heavy_bundle,
        max_batch_size=2,
        max_concurrent_batches=1,
        intra_op_threads=1,
        default_beam_size=8,
        request_timeout_s=60,
    )
    responses = asyncio.run(_scenario(running, jpeg))
    assert [r.status_code for r in responses] == [200] * STAYERS
    captions = {r.json()["caption"] for r in responses}
    assert len(captions) == 1 and captions != {""}  # same image, same caption, all complete
    wait_until(lambda: running.sample("caption_pending_requests") == 0, what="the leavers answered")
    assert running.sample("caption_rejected_total", {"reason": "cancelled"}) == LEAVERS
    assert running.sample("caption_batch_size_sum") == STAYERS  # leavers never ran
    assert running.sample("caption_requests_total", {"endpoint": "/caption", "code": "499"}) == (
        LEAVERS
    )
    assert_healthy(running.url, jpeg)
