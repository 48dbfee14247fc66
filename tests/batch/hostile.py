"""A real image server on 127.0.0.1 for the CLI's URL inputs: good, missing, stalling and gated.

``UrlServer`` runs an asyncio HTTP/1.1 server in a background thread (the CLI under test is another
process), so a test holds it with ``with UrlServer(files) as server:``. Paths:

    /img/<name>     the bytes of ``files[name]`` (image/jpeg)
    /stall          reads the request, never answers (the fetcher's read/total timeout ends it)
    /gated/<name>   like /img/<name>, but only once ``open_gate()`` has been called
    anything else   404

Every request path is recorded in ``requests`` (the proof that a refused URL made no request).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

from tests.batch.conftest import wait_for


class UrlServer:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._gate = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def __enter__(self) -> UrlServer:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def open_gate(self) -> None:
        """Let every held and future ``/gated/`` request be answered."""
        self._loop.call_soon_threadsafe(self._gate.set)

    def wait_requests(self, prefix: str, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` requests whose path starts with ``prefix`` have arrived."""
        wait_for(
            lambda: sum(p.startswith(prefix) for p in list(self.requests)) >= count,
            timeout,
            f"{count} requests to {prefix}",
        )

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.requests.append(path)
            if path == "/stall":
                await asyncio.sleep(3600)
            if path.startswith("/gated/"):
                await self._gate.wait()
            name = path.split("/", 2)[-1]
            body = self.files.get(name) if path.startswith(("/img/", "/gated/")) else None
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
