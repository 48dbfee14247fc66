"""SSRF: every internal destination is refused with ``url_forbidden`` and NO connection is made.

Proof of "no connection": a listener on 127.0.0.1, 127.0.0.2 and ::1 (same port) counts accepts,
and the httpx transport records every request that reached it; both must stay at zero. A positive
control shows the listener does count a connection when the fetch is allowed.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import BadRequest, UrlFetchFailed, UrlForbidden
from service.netguard import parse_ipv4_loose
from service.urlfetch import FetchPolicy, build_client, build_transport, fetch_image
from tests.service.conftest import RunningServer
from tests.service.urlservers import (
    AcceptRecorder,
    FakeResolver,
    RawServer,
    RecordingTransport,
    ThreadedAcceptRecorder,
    ok,
    redirect,
)

JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes"


@dataclass
class Rig:
    listener: AcceptRecorder
    server: RawServer  # an allow-listed server that can redirect anywhere
    transport: RecordingTransport
    client: httpx.AsyncClient
    resolver: FakeResolver

    def policy(self, *extra: str) -> FetchPolicy:
        return FetchPolicy(allowlist=(f"127.0.0.1:{self.server.port}", *extra), max_bytes=1 << 20)

    def assert_no_connection(self) -> None:
        assert self.listener.accepts == 0
        assert self.transport.requests == []


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    listener = await AcceptRecorder().start()
    server = await RawServer(routes={"/img.jpg": ok(JPEG)}).start()
    transport = RecordingTransport(build_transport())
    resolver = FakeResolver(
        {
            "internal.example": ["10.0.0.5"],
            "metadata.example": ["169.254.169.254"],
            "mixed.example": ["93.184.216.34", "127.0.0.1"],
            "v6private.example": ["fd12:3456::1"],
            "mapped.example": ["::ffff:127.0.0.1"],
            "localhost": ["::1", "127.0.0.1"],
        }
    )
    async with build_client(FetchPolicy(), transport=transport) as client:
        yield Rig(listener, server, transport, client, resolver)
    await server.stop()
    await listener.stop()


DIRECT = [
    "http://127.0.0.1:{p}/",
    "http://127.0.0.2:{p}/",
    "http://127.255.255.254:{p}/",
    "http://[::1]:{p}/",
    "http://0.0.0.0:{p}/",
    "http://0:{p}/",
    "http://[::]:{p}/",
    "http://2130706433:{p}/",  # decimal
    "http://0x7f.1:{p}/",  # hex + short form
    "http://0x7f000001:{p}/",
    "http://017700000001:{p}/",  # octal
    "http://127.1:{p}/",
    "http://127.0.0.1.:{p}/",  # trailing dot
    "http://[::ffff:127.0.0.1]:{p}/",  # IPv4-mapped
    "http://[::ffff:7f00:1]:{p}/",
    "http://[::127.0.0.1]:{p}/",  # IPv4-compatible
    "http://[2002:7f00:1::]:{p}/",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::7f00:1]:{p}/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",
    "http://169.254.1.1/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://localhost:{p}/",  # the system resolver (/etc/hosts) says loopback
    "http://LOCALHOST:{p}/",
    "http://evil@127.0.0.1:{p}/",  # userinfo tricks
    "http://127.0.0.1:{p}@example.com/",
    "http://example.com@127.0.0.1:{p}/",
    "https://127.0.0.1:{p}/",
    "file:///etc/passwd",
    "ftp://127.0.0.1:{p}/",
    "gopher://127.0.0.1:{p}/_GET",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)",
    "//127.0.0.1:{p}/",
    "ws://127.0.0.1:{p}/",
]


@pytest.mark.parametrize("template", DIRECT)
async def test_internal_destinations_refused_without_connecting(rig: Rig, template: str) -> None:
    with pytest.raises(UrlForbidden) as info:
        await fetch_image(template.format(p=rig.listener.port), rig.policy(), rig.client)
    assert info.value.code == "url_forbidden" and info.value.status_code == 403
    rig.assert_no_connection()


@pytest.mark.parametrize(
    "template",
    ["http://0177.0.0.1:{p}/", "http://[::1:{p}/", "http://[::ffff:127.0.0.1/", "http://"],
)
async def test_unparseable_urls_refused_without_connecting(rig: Rig, template: str) -> None:
    """Dotted octal is not even a valid URL host for httpx: 400 bad_request, no connection."""
    with pytest.raises(BadRequest) as info:
        await fetch_image(template.format(p=rig.listener.port), rig.policy(), rig.client)
    assert info.value.status_code == 400
    rig.assert_no_connection()


@pytest.mark.parametrize(
    "host", ["internal.example", "metadata.example", "mixed.example", "v6private.example",
             "mapped.example"]
)  # fmt: skip
async def test_names_resolving_to_internal_addresses_refused(rig: Rig, host: str) -> None:
    url = f"http://{host}:{rig.listener.port}/img.jpg"
    with pytest.raises(UrlForbidden, match="resolves to a"):
        await fetch_image(url, rig.policy(), rig.client, resolver=rig.resolver)
    assert rig.resolver.calls == [host]
    rig.assert_no_connection()


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{p}/",  # same host, a port that is not allow-listed
        "http://127.0.0.2:{p}/",
        "http://[::1]:{p}/",
        "http://localhost:{p}/",
        "http://2130706433:{p}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://internal.example/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{p}/",
        "http://user:pw@127.0.0.1:{p}/",
    ],
)
async def test_redirect_to_internal_destination_refused(rig: Rig, location: str) -> None:
    rig.server.routes["/hop"] = redirect(location.format(p=rig.listener.port))
    with pytest.raises(UrlForbidden):
        await fetch_image(rig.server.url("/hop"), rig.policy(), rig.client, resolver=rig.resolver)
    assert [r.path for r in rig.server.requests] == ["/hop"]
    assert len(rig.transport.requests) == 1  # the allowed hop only
    assert rig.listener.accepts == 0


async def test_redirect_refused_at_third_hop(rig: Rig) -> None:
    rig.server.routes["/a"] = redirect("/b", 301)
    rig.server.routes["/b"] = redirect("/c", 307)
    rig.server.routes["/c"] = redirect(f"http://127.0.0.1:{rig.listener.port}/", 308)
    with pytest.raises(UrlForbidden):
        await fetch_image(rig.server.url("/a"), rig.policy(), rig.client)
    assert [r.path for r in rig.server.requests] == ["/a", "/b", "/c"]
    assert rig.listener.accepts == 0


async def test_too_many_redirects_refused(rig: Rig) -> None:
    for hop in range(5):
        rig.server.routes[f"/r{hop}"] = redirect(f"/r{hop + 1}")
    rig.server.routes["/r5"] = ok(JPEG)
    with pytest.raises(UrlFetchFailed, match="more than 3 redirects"):
        await fetch_image(rig.server.url("/r0"), rig.policy(), rig.client)
    assert [r.path for r in rig.server.requests] == ["/r0", "/r1", "/r2", "/r3"]


async def test_allowlist_is_needed_for_loopback_and_suffices(rig: Rig) -> None:
    """Positive control: the same listener URL, once allow-listed, IS connected to."""
    url = f"http://127.0.0.1:{rig.listener.port}/"
    with pytest.raises(UrlForbidden):
        await fetch_image(url, rig.policy(), rig.client)
    assert rig.listener.accepts == 0
    with pytest.raises(UrlFetchFailed):  # the listener hangs up without answering
        await fetch_image(url, rig.policy(f"127.0.0.1:{rig.listener.port}"), rig.client)
    assert rig.listener.accepts == 1


async def test_allowlisted_server_fetch_works(rig: Rig) -> None:
    fetched = await fetch_image(rig.server.url("/img.jpg"), rig.policy(), rig.client)
    assert fetched.data == JPEG
    assert fetched.content_type == "image/jpeg"
    assert rig.listener.accepts == 0 and len(rig.transport.requests) == 1


@pytest.mark.parametrize(
    ("entries", "url_host", "allowed"),
    [
        ("127.0.0.0/8", "127.0.0.2", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("::1", "[::1]", True),
        ("[::1]:{p}", "[::1]", True),
        ("[::1]:1", "[::1]", False),
        ("localhost", "localhost", True),
        ("*.localhost", "localhost", False),
        ("127.0.0.1", "[::ffff:127.0.0.1]", True),
    ],
)
async def test_allowlist_entries(rig: Rig, entries: str, url_host: str, allowed: bool) -> None:
    policy = FetchPolicy.from_strings(entries.format(p=rig.listener.port))
    url = f"http://{url_host}:{rig.listener.port}/"
    if allowed:
        with pytest.raises(UrlFetchFailed):  # connected; the listener hangs up
            await fetch_image(url, policy, rig.client)
        assert rig.listener.accepts == 1
    else:
        with pytest.raises(UrlForbidden):
            await fetch_image(url, policy, rig.client)
        rig.assert_no_connection()


@pytest.mark.parametrize("entry", ["http://x", "a b", "1.2.3.4:99999", "[::1", "*", "x:y"])
def test_bad_allowlist_entries_rejected(entry: str) -> None:
    with pytest.raises(ValueError):
        FetchPolicy.from_strings(entry)


# ---- the same refusals through the real service (uvicorn on 127.0.0.1) ---------------------

E2E_URLS = [
    "http://127.0.0.1:{p}/",
    "http://127.0.0.2:{p}/",
    "http://[::1]:{p}/",
    "http://0.0.0.0:{p}/",
    "http://localhost:{p}/",
    "http://2130706433:{p}/",
    "http://0x7f.1:{p}/",
    "http://017700000001:{p}/",
    "http://[::ffff:127.0.0.1]:{p}/",
    "http://evil@127.0.0.1:{p}/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://[fc00::1]/",
    "http://[fe80::1]/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{p}/",
]


@pytest.fixture
def recorder() -> Iterator[ThreadedAcceptRecorder]:
    listener = ThreadedAcceptRecorder()
    yield listener
    listener.close()


@pytest.mark.e2e
def test_service_refuses_internal_urls_without_connecting(
    served: RunningServer, recorder: ThreadedAcceptRecorder
) -> None:
    urls = [template.format(p=recorder.port) for template in E2E_URLS]
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for url in urls:
            response = http.post("/caption", json={"url": url})
            assert response.status_code == 403, (url, response.text)
            assert response.json()["code"] == "url_forbidden", url
        batch = http.post("/caption/batch", json={"images": [{"url": u} for u in urls]})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["error"]["code"] for r in results] == ["url_forbidden"] * len(urls)
    assert all(r["status"] == 403 for r in results)
    assert recorder.accepts == 0


@pytest.mark.e2e
def test_service_refuses_redirect_to_loopback(
    start_server: Callable[..., RunningServer], recorder: ThreadedAcceptRecorder
) -> None:
    target = f"http://127.0.0.1:{recorder.port}/secret"

    class Redirector(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    thread = threading.Thread(target=redirector.serve_forever, daemon=True)
    thread.start()
    try:
        port = redirector.server_address[1]
        running = start_server(url_allowlist=f"127.0.0.1:{port}")
        response = httpx.post(
            f"{running.url}/caption", json={"url": f"http://127.0.0.1:{port}/img"}, timeout=30
        )
    finally:
        redirector.shutdown()
        redirector.server_close()
        thread.join(5)
    assert response.status_code == 403 and response.json()["code"] == "url_forbidden"
    assert recorder.accepts == 0


# ---- numeric host spellings read exactly as inet_aton (and browsers) read them ---------------


def _spell(value: int, base: int) -> str:
    return {10: str(value), 16: hex(value), 8: "0" + oct(value)[2:]}[base]


@given(
    number=st.integers(0, 2**32 - 1),
    parts=st.sampled_from([1, 2, 3, 4]),
    bases=st.lists(st.sampled_from([8, 10, 16]), min_size=4, max_size=4),
)
def test_numeric_spellings_match_inet_aton(number: int, parts: int, bases: list[int]) -> None:
    octets = number.to_bytes(4, "big")
    head = list(octets[: parts - 1])
    tail = int.from_bytes(octets[parts - 1 :], "big")
    host = ".".join(_spell(v, b) for v, b in zip([*head, tail], bases, strict=False))
    expected = ipaddress.IPv4Address(socket.inet_aton(host))
    assert parse_ipv4_loose(host) == expected == ipaddress.IPv4Address(number)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.1.1.1", "08", "1..2", ""])
def test_non_numeric_hosts_are_names(host: str) -> None:
    loose = parse_ipv4_loose(host)
    try:
        aton: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        aton = None
    assert loose == aton


def test_bare_hex_prefix_reads_as_zero_like_browsers() -> None:
    """inet_aton rejects "0x" but the WHATWG URL parser reads it as 0: refusing is the safe side."""
    assert parse_ipv4_loose("0x") == ipaddress.IPv4Address(0)
