"""Hostile image servers hit through the real service, many at once: bounded time and memory.

The fetcher's behaviour against each hostile server (and every SSRF refusal, proven
connection-free) is tested in tests/service/test_urlfetch.py and test_ssrf.py. This fills the
gap at the process level: ``python -m service`` (loopback allowlisted) gets 24 concurrent URL
requests to a server that streams an endless body, trickles a byte at a time, or promises a
Content-Length and stalls. Every request ends with its documented code within the fetch time
limit, the server's RSS grows by less than the bytes the limits allow in flight, and it stays
healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.reliability.conftest import ServiceFactory, assert_healthy, rss_bytes

pytestmark = pytest.mark.e2e

MAX_UPLOAD = 1_000_000
TOTAL_TIMEOUT_S = 2.0
WAVES = 2
EXPECTED = {
    "/endless": {(413, "url_too_large")},
    "/trickle": {(504, "url_timeout")},
    "/liar": {(504, "url_timeout"), (502, "url_fetch_failed")},
}


async def _hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = (await reader.readline()).decode("latin-1")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split()[1] if len(line.split()) > 1 else "/"
        if path == "/endless":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n")
            chunk = b"\xff" * 65536
            while True:
                writer.write(chunk)
                await writer.drain()
        elif path == "/trickle":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 9999\r\n\r\n"
            )
            while True:
                writer.write(b"\xff")
                await writer.drain()
                await asyncio.sleep(0.3)
        else:  # /liar: promises 1 MB, sends 100 bytes, stalls
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n"
            )
            writer.write(b"\xff" * 100)
            await writer.drain()
            await asyncio.sleep(3600)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await writer.wait_closed()


@pytest.fixture
def hostile_server() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    start = asyncio.start_server(_hostile, "127.0.0.1", 0)
    server = asyncio.run_coroutine_threadsafe(start, loop).result(10)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def shutdown() -> None:
        server.close()
        await server.wait_closed()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


async def _fire(url: str, targets: list[str]) -> list[tuple[str, int, str, float]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(target: str) -> tuple[str, int, str, float]:
            start = time.monotonic()
            r = await client.post("/caption", json={"url": target})
            return target, r.status_code, r.json().get("code", ""), time.monotonic() - start

        return await asyncio.gather(*(one(t) for t in targets))


def test_hostile_servers_in_bulk(
    service_process: ServiceFactory, hostile_server: str, jpeg: bytes
) -> None:
    proc = service_process(
        CAPTION_URL_ALLOWLIST="127.0.0.1",
        CAPTION_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        CAPTION_URL_READ_TIMEOUT_S="1",
        CAPTION_URL_CONNECT_TIMEOUT_S="1",
        CAPTION_URL_TOTAL_TIMEOUT_S=str(TOTAL_TIMEOUT_S),
        CAPTION_URL_FETCH_CONCURRENCY="8",
        CAPTION_REQUEST_TIMEOUT_S="30",
    )
    targets = [f"{hostile_server}{path}" for path in EXPECTED for _ in range(8)]
    asyncio.run(_fire(proc.url, targets))  # warm-up wave: buffers, threads, allocator arenas
    before = rss_bytes(proc.process.pid)
    rss = []
    for _ in range(WAVES):
        results = asyncio.run(_fire(proc.url, targets))
        for target, status, code, _elapsed in results:
            path = target[len(hostile_server) :]
            assert (status, code) in EXPECTED[path], (target, status, code)
        # 8 fetches at a time (the semaphore), each within the total limit: 3 rounds at most
        slowest = max(elapsed for *_, elapsed in results)
        assert slowest < 3 * TOTAL_TIMEOUT_S + 3.0, slowest
        rss.append(rss_bytes(proc.process.pid))
    print("RSS MB", before / 2**20, [r / 2**20 for r in rss])
    # bounded, not cumulative: each wave offers the service an endless 8 x 1 MB cap and more;
    # RSS stays within a fixed allowance (allocator slack included) of the warmed-up value
    assert max(rss) < before + 64 * 2**20, (before, rss)
    assert_healthy(proc.url, jpeg)
