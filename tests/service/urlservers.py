"""Real local servers for the URL-fetch tests: a scriptable raw HTTP/1.1 server, an accept-recording
listener, a request-recording httpx transport and a fake resolver. Everything binds to loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from service.netguard import IPAddress

Handler = Callable[["Request", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Request:
    """What the server received: request line and headers (lower-case names)."""

    method: str
    path: str
    headers: dict[str, str]
    sni: str | None = None


def response_head(status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ok(body: bytes, content_type: str | None = "image/jpeg") -> Handler:
    async def handle(_: Request, writer: asyncio.StreamWriter) -> None:
        headers = {"Content-Length": str(len(body)), "Connection": "close"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        writer.write(response_head(200, headers) + body)
        await writer.drain()

    return handle


def status(code: int, headers: dict[str, str] | None = None) -> Handler:
    async def handle(_: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_head(code, {"Content-Length": "0", **(headers or {})}))
        await writer.drain()

    return handle


def redirect(location: str, code: int = 302) -> Handler:
    return status(code, {"Location": location})


@dataclass
class RawServer:
    """An HTTP/1.1 server whose every path is a coroutine writing whatever bytes it likes."""

    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    port: int = 0
    _server: asyncio.Server | None = None
    sni_names: list[str | None] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> RawServer:
        if self.ssl_context is not None:
            self.ssl_context.sni_callback = lambda _obj, name, _ctx: self.sni_names.append(name)
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "/", host: str | None = None) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {}
            for header in header_lines:
                if ":" in header:
                    name, value = header.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            sni = self.sni_names[-1] if self.sni_names else None
            request = Request(method, path, headers, sni)
            self.requests.append(request)
            handler = self.routes.get(path.split("?", 1)[0], status(404))
            await handler(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass


@dataclass
class AcceptRecorder:
    """Listens on one port at 127.0.0.1, 127.0.0.2 and ::1 and counts every connection accepted:
    the proof that a refused fetch made no connection."""

    accepts: int = 0
    port: int = 0
    _servers: list[asyncio.Server] = field(default_factory=list)

    async def start(self) -> AcceptRecorder:
        first = await asyncio.start_server(self._on_accept, "127.0.0.1", 0)
        self.port = first.sockets[0].getsockname()[1]
        self._servers.append(first)
        for host in ("127.0.0.2", "::1"):
            self._servers.append(await asyncio.start_server(self._on_accept, host, self.port))
        return self

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _on_accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        writer.close()


class RecordingTransport(httpx.AsyncBaseTransport):
    """Wraps a real transport and records every request that reached it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FakeResolver:
    """Same signature as ``service.urlfetch.system_resolve``; answers from a table, counts calls.

    A value that is a list of lists gives a different answer on each call (DNS rebinding)."""

    def __init__(self, table: dict[str, list[str] | list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = self.table[host]
        if answer and isinstance(answer[0], list):
            answers: list[list[str]] = answer
            chosen = answers[min(len(self.calls) - 1, len(answers) - 1)]
        else:
            chosen = answer  # type: ignore[assignment]
        return [ipaddress.ip_address(a) for a in chosen]


class ThreadedAcceptRecorder:
    """The blocking twin of :class:`AcceptRecorder` for tests that talk to a server in a thread:
    counts connections accepted on one port at 127.0.0.1, 127.0.0.2 and ::1."""

    def __init__(self) -> None:
        self.accepts = 0
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        first = socket.create_server(("127.0.0.1", 0))
        self.port: int = first.getsockname()[1]
        self._sockets = [
            first,
            socket.create_server(("127.0.0.2", self.port)),
            socket.create_server(("::1", self.port), family=socket.AF_INET6),
        ]
        for sock in self._sockets:
            sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for sock in self._sockets:
                try:
                    conn, _ = sock.accept()
                except (TimeoutError, OSError):
                    continue
                self.accepts += 1
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self._sockets:
            sock.close()
