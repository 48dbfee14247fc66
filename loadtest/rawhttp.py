"""A lean HTTP/1.1 client for the load generator: prebuilt request bytes over pooled keep-alive
asyncio streams.

Why not httpx for the load itself: on a small machine the generator shares the CPU with the
service it measures, and httpx's CPU per request is comparable to the service's own work per
image; this client costs a fraction of that, so the service gets the cores. httpx is still used
for ``/metrics`` and is selectable for the load (``--client httpx``).

Scope: what POST /caption needs. ``Content-Length`` or ``chunked`` response bodies, keep-alive
reuse (idle connections dropped after 2 s, before the server's keep-alive timeout), ``Connection:
close`` honoured, a request that fails on a reused connection retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit


class RawHttpError(Exception):
    """The connection failed or the response was not valid HTTP/1.1."""


@dataclass(frozen=True)
class RawResponse:
    status: int
    body: bytes


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class RawClient:
    """POST prebuilt bodies to one ``http://host:port``; at most ``max_connections`` at once."""

    def __init__(
        self, base_url: str, *, max_connections: int = 256, keepalive_s: float = 2.0
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"RawClient speaks plain http only, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = parts.netloc
        self._idle: list[_Conn] = []
        self._keepalive_s = keepalive_s
        """Idle connections older than this are closed, not reused: the server (uvicorn: 5 s)
        may be closing them at that very moment."""
        self._slots = asyncio.Semaphore(max_connections)

    def request_head(self, path: str, headers: dict[str, str], length: int) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [f"Content-Length: {length}", "", ""]
        return "\r\n".join(lines).encode("latin-1")

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> RawResponse:
        payload = self.request_head(path, headers, len(body)) + body
        async with self._slots:
            for attempt in (0, 1):
                conn = self._take_idle() if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                try:
                    conn.writer.write(payload)
                    response, keep = await _read_response(conn.reader)
                except (
                    OSError,
                    EOFError,
                    ValueError,
                    asyncio.LimitOverrunError,
                    RawHttpError,
                ) as exc:
                    conn.close()
                    if reused and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: retry once
                    raise RawHttpError(f"{type(exc).__name__}: {exc}") from exc
                except BaseException:
                    conn.close()  # cancelled mid-response: the connection is unusable
                    raise
                if keep:
                    conn.idle_since = asyncio.get_running_loop().time()
                    self._idle.append(conn)
                else:
                    conn.close()
                return response
        raise AssertionError("unreachable")

    def _take_idle(self) -> _Conn | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()  # most recently used first
            if now - conn.idle_since < self._keepalive_s:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise RawHttpError(f"connect to {self.host}:{self.port} failed: {exc}") from exc
        return _Conn(reader, writer)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _read_response(reader: asyncio.StreamReader) -> tuple[RawResponse, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise RawHttpError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()  # body ends with the connection
        return RawResponse(status, body), False
    keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
    return RawResponse(status, body), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers expected
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
