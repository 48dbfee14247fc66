"""A generated corpus of malformed and hostile requests against a real uvicorn server.

Every answer is a documented error (exact status and ``code``) or, for odd-but-valid images, a
caption; never a 5xx; and the server is healthy afterwards. Broken HTTP itself (bad chunking,
a lying Content-Length, a garbage request line) is answered 4xx or closed by uvicorn, never 5xx.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability import corpus
from tests.reliability.conftest import assert_healthy, documented_errors, server_errors
from tests.service.conftest import ServiceProcess, run_process

pytestmark = pytest.mark.e2e

LIMITS = {"max_upload_bytes": 1_000_000, "max_batch_body_bytes": 2_000_000}
ENV = {f"CAPTION_{k.upper()}": str(v) for k, v in LIMITS.items()}


@pytest.fixture(scope="module")
def hardened(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """``python -m service`` with small body limits: production warning filters (a corrupt
    EXIF block is a PIL warning, not an error) and its own process."""
    folder = tmp_path_factory.mktemp("malformed")
    log = folder / "service.log"
    with run_process(tiny_bundle, log, {"CAPTION_REQUEST_TIMEOUT_S": "30", **ENV}) as proc:
        yield proc


@pytest.fixture(scope="module")
def cases(jpeg: bytes) -> dict[str, corpus.Case]:
    built = corpus.build(jpeg, **LIMITS)
    assert len(built) >= 30
    return {case.name: case for case in built}


CASE_NAMES = [c.name for c in corpus.build(b"\xff\xd8" + b"\x00" * 1024, **LIMITS)]


def test_corpus_is_large_and_distinct() -> None:
    assert len(CASE_NAMES) == len(set(CASE_NAMES)) >= 30


@pytest.mark.parametrize("name", CASE_NAMES)
def test_malformed_input(
    hardened: ServiceProcess, cases: dict[str, corpus.Case], name: str
) -> None:
    case = cases[name]
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    r = httpx.post(f"{hardened.url}{case.path}", content=case.body, headers=headers, timeout=60)
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-request-id"]
    body = r.json()
    if r.status_code == 200 and (case.code is None or case.ok_or):
        assert body["caption"]
        return
    assert (r.status_code, body.get("code")) == (case.status, case.code), body
    assert set(body) == {"detail", "code"} and body["detail"]
    assert documented_errors()[body["code"]] == r.status_code


def _raw(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes, half-close, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


RAW_REQUESTS = {
    "garbage request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n",
    "bad chunk size": (
        b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    ),
    "Content-Length longer than the body": (
        b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 5000\r\n\r\n\xff\xd8\xff"
    ),
    "two Content-Lengths": (
        b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 3\r\nContent-Length: 9\r\n\r\nabc"
    ),
    "negative Content-Length": (
        b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: -1\r\n\r\n"
    ),
    "header without colon": b"POST /caption HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n",
    "100 KB header": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", list(RAW_REQUESTS))
def test_broken_http_never_gets_a_5xx(hardened: ServiceProcess, name: str) -> None:
    port = int(hardened.url.rsplit(":", 1)[1])
    answer = _raw(port, RAW_REQUESTS[name])
    if answer:  # uvicorn may also just close the connection
        status_line = answer.split(b"\r\n", 1)[0]
        status = int(status_line.split()[1])
        lowest = 200 if name == "100 KB header" else 400  # big but valid: may be served
        assert lowest <= status < 500, status_line


async def _concurrent_garbage(url: str, bodies: list[bytes]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post("/caption", content=b, headers={"Content-Type": "image/png"})
                for b in bodies
            )
        )
    return [r.status_code for r in responses]


def test_server_healthy_after_the_corpus(
    hardened: ServiceProcess, cases: dict[str, corpus.Case], jpeg: bytes
) -> None:
    """Runs last in this module: the corpus again, all at once, then probes and a caption."""
    bodies = [c.body for c in cases.values() if c.path == "/caption"][:40]
    statuses = asyncio.run(_concurrent_garbage(hardened.url, bodies))
    assert all(s < 500 for s in statuses), statuses
    assert_healthy(hardened.url, jpeg)
    assert server_errors(hardened.url) == {}
    assert hardened.process.poll() is None
