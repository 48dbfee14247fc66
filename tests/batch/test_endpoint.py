"""EndpointEngine against real servers on 127.0.0.1: the captioner itself, and a scripted fake.

The fake is a small HTTP/1.1 server on asyncio streams that answers each path from a script
(503 twice then 200, ...), counts attempts and simultaneous requests, and can hold answers on
an ``asyncio.Event``. Retry waits go through an injected ``sleep`` that records the delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch.endpoint import EndpointEngine, RemoteError, parse_retry_after
from service.errors import CaptionError
from tests.service.conftest import RunningServer, free_socket, run_server
from tests.service.images import encode, noise_rgb

API_KEY = "test-key"
MODEL = {"name": "fake-model", "version": "9.9.9"}
READY = {"status": "ready", "ready": True, "model": MODEL}
ANSWER = {
    "caption": "a dog",
    "captions": [{"text": "a dog", "score": -0.5}, {"text": "a cat", "score": -0.9}],
    "model": MODEL,
    "timings_ms": {"queue": 1.0, "total": 2.0},
    "request_id": "r1",
}


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=lambda: ANSWER)
    headers: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None
    """Answer only once this is set."""


def error(status: int, code: str, **headers: str) -> Reply:
    return Reply(status, {"detail": f"{code} detail", "code": code}, headers)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeService:
    """Answers each path from ``script[path]`` in order (the last reply repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {
            "/readyz": [Reply(body=READY)],
            "/caption": [Reply()],
        }
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate = asyncio.Event()  # every /caption answer waits for it; open by default
        self.gate.set()
        self._changed = asyncio.Condition()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def attempts(self, path: str = "/caption") -> int:
        return sum(1 for s in self.seen if s.path.split("?")[0] == path)

    async def wait_in_flight(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                lines = (line.split(":", 1) for line in head[1:] if line)
                headers = {name.strip().lower(): value.strip() for name, value in lines}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(Seen(method, target, headers, body))
                reply = await self._answer(target.split("?")[0])
                payload = json.dumps(reply.body).encode()
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write(
                    f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(self, path: str) -> Reply:
        replies = self.script[path]
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if path != "/caption":
            return reply
        async with self._changed:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()
        try:
            await self.gate.wait()
            if reply.hold is not None:
                await reply.hold.wait()
        finally:
            self.in_flight -= 1
        return reply


class Sleeps:
    """The engine's ``sleep``: records each delay and waits one loop turn, not the delay."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeService]:
    service = FakeService()
    await service.start()
    yield service
    await service.aclose()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


async def connect(fake: FakeService, sleeps: Sleeps, **options: Any) -> EndpointEngine:
    return await EndpointEngine.connect(fake.url, sleep=sleeps, **options)


async def caption(engine: EndpointEngine, data: bytes = b"img") -> list[tuple[str, float]]:
    answer = await engine.caption(data, beam_size=3, max_length=None, num_captions=2)
    return answer.captions


# --- the fake service: protocol, retries, bounds ---------------------------------------------
async def test_connect_records_the_model_and_sends_bytes_options_and_key(
    fake: FakeService, sleeps: Sleeps
) -> None:
    async with await connect(fake, sleeps, api_key="k1") as engine:
        assert (engine.model_name, engine.model_version) == ("fake-model", "9.9.9")
        answer = await engine.caption(b"\x89PNG", beam_size=5, max_length=12, num_captions=2)
    assert answer.captions == [("a dog", -0.5), ("a cat", -0.9)]
    assert (answer.model_name, answer.model_version) == ("fake-model", "9.9.9")
    assert answer.timings_ms == {"queue": 1.0, "total": 2.0}
    request = fake.seen[-1]
    assert request.method == "POST" and request.body == b"\x89PNG"
    assert request.path == "/caption?beam_size=5&num_captions=2&max_length=12"
    assert request.headers["content-type"] == "application/octet-stream"
    assert request.headers["authorization"] == "Bearer k1"


async def test_connect_waits_until_ready(fake: FakeService, sleeps: Sleeps) -> None:
    fake.script["/readyz"] = [error(503, "not_ready", **{"Retry-After": "1"})] * 2 + [
        Reply(body=READY)
    ]
    async with await connect(fake, sleeps) as engine:
        assert engine.model_version == "9.9.9"
    assert fake.attempts("/readyz") == 3
    assert len(sleeps.delays) == 2 and all(d >= 1.0 for d in sleeps.delays)


async def test_connect_gives_up_when_never_ready(fake: FakeService, sleeps: Sleeps) -> None:
    fake.script["/readyz"] = [error(503, "not_ready", **{"Retry-After": "1"})]
    with pytest.raises(CaptionError) as raised:
        await connect(fake, sleeps, ready_timeout_s=5)
    assert (raised.value.code, raised.value.status_code) == ("not_ready", 503)
    assert sum(sleeps.delays) <= 5


async def test_503_retry_after_is_honoured(fake: FakeService, sleeps: Sleeps) -> None:
    fake.script["/caption"] = [error(503, "overloaded", **{"Retry-After": "1"})] * 2 + [Reply()]
    async with await connect(fake, sleeps, backoff_base_s=0.5) as engine:
        assert await caption(engine) == [("a dog", -0.5), ("a cat", -0.9)]
    assert fake.attempts() == 3
    assert len(sleeps.delays) == 2
    assert all(1.0 <= d <= 1.5 for d in sleeps.delays)  # Retry-After plus jitter


async def test_429_retry_after_as_an_http_date_is_honoured(
    fake: FakeService, sleeps: Sleeps
) -> None:
    when = email.utils.formatdate(time.time() + 4, usegmt=True)
    fake.script["/caption"] = [error(429, "rate_limited", **{"Retry-After": when}), Reply()]
    async with await connect(fake, sleeps) as engine:
        await caption(engine)
    assert fake.attempts() == 2
    assert len(sleeps.delays) == 1 and 2.5 <= sleeps.delays[0] <= 4.5


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_errors_are_retried_with_backoff(
    fake: FakeService, sleeps: Sleeps, status: int
) -> None:
    fake.script["/caption"] = [error(status, "upstream"), Reply()]
    async with await connect(fake, sleeps, backoff_base_s=0.5) as engine:
        await caption(engine)
    assert fake.attempts() == 2
    assert len(sleeps.delays) == 1 and 0.25 <= sleeps.delays[0] <= 0.5


@pytest.mark.parametrize(
    ("status", "code"), [(400, "invalid_option"), (401, "unauthorized"), (422, "invalid_image")]
)
async def test_a_4xx_is_raised_after_one_attempt(
    fake: FakeService, sleeps: Sleeps, status: int, code: str
) -> None:
    fake.script["/caption"] = [error(status, code), Reply()]
    async with await connect(fake, sleeps) as engine:
        with pytest.raises(CaptionError) as raised:
            await caption(engine)
    assert (raised.value.status_code, raised.value.code) == (status, code)
    assert raised.value.detail == f"{code} detail"
    assert fake.attempts() == 1 and sleeps.delays == []


async def test_an_unreadable_answer_is_an_error(fake: FakeService, sleeps: Sleeps) -> None:
    fake.script["/caption"] = [Reply(body={"caption": "no list"})]
    async with await connect(fake, sleeps) as engine:
        with pytest.raises(CaptionError) as raised:
            await caption(engine)
    assert (raised.value.status_code, raised.value.code) == (502, "invalid_response")
    assert fake.attempts() == 1


async def test_retries_are_bounded_and_the_last_error_is_raised(
    fake: FakeService, sleeps: Sleeps
) -> None:
    fake.script["/caption"] = [error(503, "overloaded", **{"Retry-After": "1"})]
    async with await connect(fake, sleeps, max_retries=3, backoff_base_s=1.0) as engine:
        with pytest.raises(RemoteError) as raised:
            await caption(engine)
    assert (raised.value.status_code, raised.value.code) == (503, "overloaded")
    assert raised.value.headers == {"Retry-After": "1"}
    assert fake.attempts() == 4
    backoffs = sleeps.delays
    assert len(backoffs) == 3 and backoffs[2] >= 2.0  # Retry-After, or the backoff if longer


async def test_a_read_timeout_is_retried(fake: FakeService, sleeps: Sleeps) -> None:
    fake.script["/caption"] = [Reply(hold=asyncio.Event()), Reply()]  # the first never answers
    async with await connect(fake, sleeps, timeout_s=0.2) as engine:
        assert await caption(engine) == [("a dog", -0.5), ("a cat", -0.9)]
    assert fake.attempts() == 2 and len(sleeps.delays) == 1


async def test_a_service_gone_away_is_endpoint_unreachable(
    fake: FakeService, sleeps: Sleeps
) -> None:
    async with await connect(fake, sleeps, max_retries=2) as engine:
        await fake.aclose()
        with pytest.raises(CaptionError) as raised:
            await caption(engine)
    assert raised.value.code == "endpoint_unreachable"
    assert len(sleeps.delays) == 2


async def test_a_refused_port_is_endpoint_unreachable(sleeps: Sleeps) -> None:
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # bound, then closed: nothing listens there
    with pytest.raises(CaptionError) as raised:
        await EndpointEngine.connect(url, max_retries=3, sleep=sleeps)
    assert raised.value.code == "endpoint_unreachable"
    assert len(sleeps.delays) == 3


async def test_requests_in_flight_never_exceed_concurrency(
    fake: FakeService, sleeps: Sleeps
) -> None:
    fake.gate.clear()
    async with await connect(fake, sleeps, concurrency=3) as engine:
        assert engine.concurrency == 3
        calls = [asyncio.create_task(caption(engine)) for _ in range(12)]
        await fake.wait_in_flight(3)
        await asyncio.sleep(0.2)  # a window for any 4th request to arrive (none may)
        assert fake.in_flight == 3 and fake.attempts() == 3
        fake.gate.set()
        assert len(await asyncio.gather(*calls)) == 12
    assert fake.max_in_flight == 3 and fake.attempts() == 12


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # past


# --- the real captioner -------------------------------------------------------------------
@pytest.fixture(scope="module")
def captioner(tiny_bundle: Path) -> Iterator[RunningServer]:
    with run_server(tiny_bundle, api_keys=API_KEY, request_timeout_s=20.0) as running:
        yield running


def requests_answered(server: RunningServer, code: int) -> float:
    """Requests the server answered with ``code``, on any route (a 401 comes before routing)."""
    return sum(
        sample.value
        for metric in server.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "caption_requests_total" and sample.labels["code"] == str(code)
    )


@pytest.mark.e2e
async def test_captions_equal_the_services_own_answer(captioner: RunningServer) -> None:
    image = encode(noise_rgb(64, 48, seed=3), "JPEG")
    async with httpx.AsyncClient(base_url=captioner.url, timeout=30) as client:
        direct = await client.post(
            "/caption?beam_size=3&num_captions=2",
            content=image,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "image/jpeg"},
        )
        ready = (await client.get("/readyz")).json()
    assert direct.status_code == 200
    async with await EndpointEngine.connect(captioner.url, api_key=API_KEY) as engine:
        assert engine.model_version == ready["model"]["version"]
        answer = await engine.caption(image, beam_size=3, max_length=None, num_captions=2)
    assert answer.captions == [(c["text"], c["score"]) for c in direct.json()["captions"]]
    assert (answer.model_name, answer.model_version) == (
        ready["model"]["name"],
        ready["model"]["version"],
    )
    assert answer.timings_ms["total"] > 0


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("key", "status", "code"), [(API_KEY, 422, "invalid_image"), ("wrong", 401, "unauthorized")]
)
async def test_the_services_4xx_is_raised_and_not_retried(
    captioner: RunningServer, sleeps: Sleeps, key: str, status: int, code: str
) -> None:
    before = requests_answered(captioner, status)
    async with await EndpointEngine.connect(captioner.url, api_key=key, sleep=sleeps) as engine:
        with pytest.raises(CaptionError) as raised:
            await engine.caption(b"not an image", beam_size=1, max_length=None, num_captions=1)
    assert (raised.value.status_code, raised.value.code) == (status, code)
    assert raised.value.detail
    assert sleeps.delays == []
    with contextlib.suppress(TimeoutError):  # the server counts just after it answers
        async with asyncio.timeout(5):
            while requests_answered(captioner, status) < before + 1:
                await asyncio.sleep(0.01)
    assert requests_answered(captioner, status) == before + 1
