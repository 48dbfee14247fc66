"""URL fetching against real local servers: success paths, pinning, TLS names, and hostile servers
that trickle, never end, lie about their length or never answer. Each must end within its limits
with the right error code."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.errors import (
    CaptionError,
    UnsupportedMediaType,
    UrlFetchFailed,
    UrlForbidden,
    UrlTimeout,
    UrlTooLarge,
)
from service.urlfetch import FetchPolicy, build_client, build_transport, fetch_image
from tests.service.urlservers import (
    FakeResolver,
    RawServer,
    RecordingTransport,
    Request,
    ok,
    redirect,
    response_head,
    status,
)

CAP = 256 * 1024


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    srv = await RawServer().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FetchPolicy()) as c:
        yield c


def policy_for(srv: RawServer, **limits: float) -> FetchPolicy:
    settings: dict[str, float] = {
        "max_bytes": CAP,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "total_timeout_s": 2.0,
    }
    settings.update(limits)
    return FetchPolicy.from_strings(
        f"127.0.0.1:{srv.port}",
        max_bytes=int(settings["max_bytes"]),
        connect_timeout_s=settings["connect_timeout_s"],
        read_timeout_s=settings["read_timeout_s"],
        total_timeout_s=settings["total_timeout_s"],
    )


async def timed_failure(
    url: str, policy: FetchPolicy, client: httpx.AsyncClient
) -> tuple[CaptionError, float]:
    started = time.monotonic()
    with pytest.raises(CaptionError) as info:
        await fetch_image(url, policy, client)
    return info.value, time.monotonic() - started


# ---- success paths -------------------------------------------------------------------------


async def test_fetches_a_flickr8k_jpeg(
    server: RawServer, client: httpx.AsyncClient, jpeg: bytes
) -> None:
    server.routes["/dog.jpg"] = ok(jpeg)
    fetched = await fetch_image(server.url("/dog.jpg"), policy_for(server), client)
    assert fetched.data == jpeg
    assert fetched.content_type == "image/jpeg"
    assert fetched.final_url == server.url("/dog.jpg")
    assert server.requests[0].headers["accept-encoding"] == "identity"


async def test_follows_redirects_within_limit(
    server: RawServer, client: httpx.AsyncClient, jpeg: bytes
) -> None:
    server.routes["/a"] = redirect("/b", 301)
    server.routes["/b"] = redirect(server.url("/c"), 303)
    server.routes["/c"] = redirect("/final.jpg?x=1", 307)
    server.routes["/final.jpg"] = ok(jpeg)
    fetched = await fetch_image(server.url("/a"), policy_for(server), client)
    assert fetched.data == jpeg
    assert fetched.final_url == server.url("/final.jpg?x=1")


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "image/png; q=1"])
async def test_accepted_content_types(
    server: RawServer, client: httpx.AsyncClient, content_type: str | None
) -> None:
    server.routes["/x"] = ok(b"bytes", content_type=content_type)
    fetched = await fetch_image(server.url("/x"), policy_for(server), client)
    assert fetched.data == b"bytes"
    assert fetched.content_type == (content_type or "application/octet-stream").split(";")[0]


async def test_host_name_is_resolved_once_and_pinned(
    server: RawServer, client: httpx.AsyncClient, jpeg: bytes
) -> None:
    """DNS rebinding: the second answer would be private, but there is no second lookup; the
    server still sees the original name in Host."""
    server.routes["/i.jpg"] = ok(jpeg)
    resolver = FakeResolver({"img.test": [["127.0.0.1"], ["10.0.0.1"]]})
    url = f"http://img.test:{server.port}/i.jpg"
    fetched = await fetch_image(url, policy_for(server), client, resolver=resolver)
    assert fetched.data == jpeg and fetched.final_url == url
    assert resolver.calls == ["img.test"]
    assert server.requests[0].headers["host"] == f"img.test:{server.port}"


async def test_falls_back_to_the_next_validated_address(
    server: RawServer, client: httpx.AsyncClient, jpeg: bytes
) -> None:
    """A dual-stack name whose first address refuses connections (the server listens on
    127.0.0.1 only, not on ::1): the next validated address is tried."""
    server.routes["/i.jpg"] = ok(jpeg)
    resolver = FakeResolver({"dual.test": ["::1", "127.0.0.1"]})
    policy = FetchPolicy.from_strings(f"[::1]:{server.port}, 127.0.0.1:{server.port}")
    url = f"http://dual.test:{server.port}/i.jpg"
    assert (await fetch_image(url, policy, client, resolver=resolver)).data == jpeg
    assert len(server.requests) == 1
    with pytest.raises(UrlForbidden):  # every address must pass, not just the first
        await fetch_image(url, FetchPolicy.from_strings(f"[::1]:{server.port}"), client,
                          resolver=resolver)  # fmt: skip


async def test_no_cookies_kept_between_fetches(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    async def set_cookie(_: Request, writer: asyncio.StreamWriter) -> None:
        head = {"Content-Type": "image/jpeg", "Content-Length": "1", "Set-Cookie": "sid=secret"}
        writer.write(response_head(200, head) + b"x")
        await writer.drain()

    server.routes["/c"] = set_cookie
    for _ in range(2):
        await fetch_image(server.url("/c"), policy_for(server), client)
    assert all("cookie" not in r.headers for r in server.requests)
    assert len(client.cookies.jar) == 0


# ---- upstream failures ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 403, 500, 503, 304])
async def test_upstream_error_status(
    server: RawServer, client: httpx.AsyncClient, code: int
) -> None:
    server.routes["/x"] = status(code)
    error, _ = await timed_failure(server.url("/x"), policy_for(server), client)
    assert isinstance(error, UrlFetchFailed) and str(code) in error.detail


async def test_redirect_without_location(server: RawServer, client: httpx.AsyncClient) -> None:
    server.routes["/x"] = status(302)
    error, _ = await timed_failure(server.url("/x"), policy_for(server), client)
    assert error.code == "url_fetch_failed"


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    srv = await RawServer().start()
    await srv.stop()  # the port is now closed
    error, elapsed = await timed_failure(srv.url("/x"), policy_for(srv), client)
    assert error.code == "url_fetch_failed" and elapsed < 1.0


async def test_dns_failure(client: httpx.AsyncClient) -> None:
    with pytest.raises(UrlFetchFailed, match="could not resolve"):
        await fetch_image(
            "http://nowhere.test/x.jpg", FetchPolicy(), client, resolver=FakeResolver({})
        )


async def test_slow_dns_times_out(client: httpx.AsyncClient) -> None:
    async def hang(host: str, port: int) -> list[object]:
        await asyncio.sleep(30)
        return []

    policy = FetchPolicy(connect_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(UrlTimeout):
        await fetch_image("http://slow.test/", policy, client, resolver=hang)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [("text/html", None), ("application/json", None), ("image/jpeg", "gzip")],
)
async def test_wrong_content_type_or_encoding(
    server: RawServer, client: httpx.AsyncClient, content_type: str, encoding: str | None
) -> None:
    async def handle(_: Request, writer: asyncio.StreamWriter) -> None:
        head = {"Content-Type": content_type, "Content-Length": "4"}
        if encoding:
            head["Content-Encoding"] = encoding
        writer.write(response_head(200, head) + b"<h1>")
        await writer.drain()

    server.routes["/x"] = handle
    error, _ = await timed_failure(server.url("/x"), policy_for(server), client)
    assert isinstance(error, UnsupportedMediaType) and error.status_code == 415


# ---- hostile servers -----------------------------------------------------------------------


async def test_trickling_body_ends_at_total_timeout(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    async def trickle(_: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_head(200, {"Content-Type": "image/jpeg"}))
        while True:  # one byte every 0.1 s, forever: never trips the read timeout
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    server.routes["/t"] = trickle
    error, elapsed = await timed_failure(server.url("/t"), policy_for(server), client)
    assert isinstance(error, UrlTimeout) and error.status_code == 504
    assert 1.9 < elapsed < 3.2  # total_timeout_s is 2.0


async def test_trickling_headers_end_at_total_timeout(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    async def trickle_head(_: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            writer.write(b"X-A: b\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    server.routes["/h"] = trickle_head
    error, elapsed = await timed_failure(server.url("/h"), policy_for(server), client)
    assert isinstance(error, UrlTimeout)  # ~160 header bytes: far below h11's size limit
    assert elapsed < 3.2


async def test_silent_server_hits_read_timeout(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    async def silent(_: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    server.routes["/s"] = silent
    error, elapsed = await timed_failure(
        server.url("/s"), policy_for(server, read_timeout_s=0.5), client
    )
    assert isinstance(error, UrlTimeout)
    assert 0.4 < elapsed < 1.8  # read timeout 0.5, total 2.0


async def test_endless_body_is_cut_at_the_cap(server: RawServer, client: httpx.AsyncClient) -> None:
    sent = 0

    async def endless(_: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(response_head(200, {"Content-Type": "image/jpeg", "Connection": "close"}))
        chunk = b"\0" * 65536
        while True:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    server.routes["/e"] = endless
    tracemalloc.start()
    try:
        error, elapsed = await timed_failure(server.url("/e"), policy_for(server), client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, UrlTooLarge) and error.status_code == 413
    assert elapsed < 1.9  # well before the 2 s total timeout
    assert peak < 8 * CAP  # memory bounded by the cap, not by what the server sends
    assert sent < 64 * CAP


async def test_declared_length_over_cap_refused_before_reading(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    async def huge(_: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_head(200, {"Content-Type": "image/jpeg", "Content-Length": "9" * 12}))
        await writer.drain()
        await asyncio.sleep(60)  # would hang a reader that waited for the body

    server.routes["/big"] = huge
    error, elapsed = await timed_failure(server.url("/big"), policy_for(server), client)
    assert isinstance(error, UrlTooLarge) and "over the" in error.detail
    assert elapsed < 0.9  # the read timeout (1 s) never came into play


async def test_length_understated_reads_only_declared_bytes(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    async def liar(_: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_head(200, {"Content-Type": "image/jpeg", "Content-Length": "100"}))
        while True:
            writer.write(b"y" * 65536)
            await writer.drain()

    server.routes["/l"] = liar
    fetched = await fetch_image(server.url("/l"), policy_for(server), client)
    assert fetched.data == b"y" * 100  # the rest is never read; the decoder judges these bytes


async def test_length_overstated_then_hang_up(server: RawServer, client: httpx.AsyncClient) -> None:
    async def short(_: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_head(200, {"Content-Type": "image/jpeg", "Content-Length": "5000"}))
        writer.write(b"z" * 100)
        await writer.drain()

    server.routes["/s"] = short
    error, _ = await timed_failure(server.url("/s"), policy_for(server), client)
    assert error.code == "url_fetch_failed"


async def test_length_overstated_then_stall(server: RawServer, client: httpx.AsyncClient) -> None:
    async def stall(_: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_head(200, {"Content-Type": "image/jpeg", "Content-Length": "5000"}))
        writer.write(b"z" * 100)
        await writer.drain()
        await asyncio.sleep(60)

    server.routes["/s"] = stall
    error, elapsed = await timed_failure(
        server.url("/s"), policy_for(server, read_timeout_s=0.5), client
    )
    assert isinstance(error, UrlTimeout) and elapsed < 1.8


async def test_redirect_loop_ends(server: RawServer, client: httpx.AsyncClient) -> None:
    server.routes["/loop"] = redirect("/loop")
    error, _ = await timed_failure(server.url("/loop"), policy_for(server), client)
    assert error.code == "url_fetch_failed" and len(server.requests) == 4


# ---- TLS: connect to the pinned IP, verify the certificate against the URL's name -----------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for ``img.test``, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "srv.key", folder / "srv.csr", folder / "srv.crt"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=DNS:img.test\nbasicConstraints=CA:FALSE\n")

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", ca_key, "-out", ca_crt, "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=img.test")  # fmt: skip
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "2", "-extfile", ext)  # fmt: skip
    return ca_crt, crt, key


@pytest.fixture
async def tls_server(tls_files: tuple[Path, Path, Path]) -> AsyncIterator[RawServer]:
    _, crt, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    srv = await RawServer(routes={"/i.jpg": ok(b"tls-bytes")}, ssl_context=context).start()
    yield srv
    await srv.stop()


@pytest.fixture
async def tls_client(tls_files: tuple[Path, Path, Path]) -> AsyncIterator[httpx.AsyncClient]:
    trust = ssl.create_default_context(cafile=str(tls_files[0]))
    transport = RecordingTransport(build_transport(verify=trust))
    async with build_client(FetchPolicy(), transport=transport) as c:
        yield c


async def test_https_pinned_ip_keeps_sni_and_certificate_name(
    tls_server: RawServer, tls_client: httpx.AsyncClient
) -> None:
    resolver = FakeResolver({"img.test": ["127.0.0.1"]})
    url = f"https://img.test:{tls_server.port}/i.jpg"
    fetched = await fetch_image(url, policy_for(tls_server), tls_client, resolver=resolver)
    assert fetched.data == b"tls-bytes"
    assert tls_server.requests[0].sni == "img.test"
    assert tls_server.requests[0].headers["host"] == f"img.test:{tls_server.port}"


async def test_https_certificate_for_another_name_fails(
    tls_server: RawServer, tls_client: httpx.AsyncClient
) -> None:
    resolver = FakeResolver({"other.test": ["127.0.0.1"]})
    url = f"https://other.test:{tls_server.port}/i.jpg"
    with pytest.raises(UrlFetchFailed, match="(?i)certificate"):
        await fetch_image(url, policy_for(tls_server), tls_client, resolver=resolver)
    assert tls_server.requests == []


# ---- policy construction -------------------------------------------------------------------


def test_policy_from_settings() -> None:
    from service.settings import Settings

    settings = Settings(url_allowlist="img.internal, 10.0.0.0/8,[::1]:8080", url_max_redirects=2)
    policy = FetchPolicy.from_settings(settings)
    assert policy.allowlist == ("img.internal", "10.0.0.0/8", "[::1]:8080")
    assert policy.max_redirects == 2 and policy.max_bytes == settings.max_upload_bytes


@pytest.mark.parametrize(
    "kwargs", [{"max_bytes": 0}, {"total_timeout_s": 0}, {"max_redirects": -1}]
)  # fmt: skip
def test_policy_rejects_impossible_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FetchPolicy(**kwargs)  # type: ignore[arg-type]
