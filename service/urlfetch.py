"""Fetch an image from a user-supplied URL without letting the user reach what they should not.

Threat model
------------
The URL comes from an untrusted client; the service runs inside a network (a Kubernetes pod, a
cloud VM) where it can reach things the client cannot. We defend against:

* **SSRF to internal destinations**: loopback, private (RFC 1918, unique-local IPv6), link-local,
  CGNAT, multicast, reserved, unspecified (``0.0.0.0``, ``::``) and cloud metadata addresses
  (``169.254.169.254``, ``fd00:ec2::254``...), including the same addresses written as IPv4-mapped
  or -compatible IPv6, NAT64, 6to4, and as decimal/octal/hex IPv4 (``http://2130706433/``,
  ``http://0x7f.1/``, ``http://017700000001/``): host names are resolved and every resulting
  address is judged (:mod:`service.netguard`), numeric spellings are normalised the way
  ``inet_aton`` (and browsers) read them. Only ``http`` and ``https``; credentials in URLs refused.
* **DNS rebinding**: the host is resolved ONCE and the connection goes to that validated address.
  The request URL is rewritten to the IP literal; the ``Host`` header keeps the original name and,
  for https, the TLS ``sni_hostname`` extension makes httpcore send the original name as SNI and
  verify the certificate against it. No second lookup happens anywhere (httpx connects to an IP).
  Every resolved address must pass (one private answer refuses the URL); they are tried in order
  when a connection is refused or times out (dual-stack names on IPv4-only networks).
* **Redirects** are followed by hand (never by httpx), at most ``max_redirects``; every hop is
  parsed, resolved and validated again, so an allowed server cannot bounce us to ``127.0.0.1``.
* **Hostile servers**: connect and read timeouts per operation plus one total deadline over the
  whole fetch (resolution, redirects, body), so a server trickling a byte a second still ends at
  ``total_timeout_s``. The body is streamed with a byte cap: a ``Content-Length`` over the cap is
  refused before reading; an absent or lying length is cut at the cap. Content codings other than
  identity are refused (no decompression bombs). Only ``image/*`` or ``application/octet-stream``
  (or no type at all: the image decoder decides) are accepted.
* **Ambient authority**: use :func:`build_client`: no proxies or ``.netrc`` from the environment
  (``trust_env=False``), a cookie jar that stores nothing, no connection reuse (a pooled TLS
  connection verified for one name must not carry a request for another name on the same IP).

Not covered here (the caller's job): how many fetches run at once, and decoding the bytes safely.

Errors (``service.errors``): ``UrlForbidden`` 403 (scheme, credentials, destination),
``UrlFetchFailed`` 502 (DNS failure, refused connection, upstream 4xx/5xx, protocol errors, too many
redirects), ``UrlTimeout`` 504, ``UrlTooLarge`` 413, ``UnsupportedMediaType`` 415, ``BadRequest``
400 (not a URL at all).

Kept in one module on purpose (about 400 lines): every defence above depends on the others
(the pinned address, the hop-by-hop checks, the shared deadline), and they are reviewed together.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Protocol

import httpx

from service.errors import (
    BadRequest,
    UnsupportedMediaType,
    UrlFetchFailed,
    UrlForbidden,
    UrlTimeout,
    UrlTooLarge,
)
from service.netguard import Allowlist, IPAddress, forbidden_reason, parse_ipv4_loose

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
"""``async (host, port) -> addresses``: how host names become addresses (tests pass fakes)."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ACCEPTED_TYPES = ("image/", "application/octet-stream")
MAX_URL_LENGTH = 4096
USER_AGENT = "captioner-urlfetch/0.1"


@dataclass(frozen=True)
class FetchPolicy:
    """What a URL fetch may reach and how long and how much it may take."""

    allowlist: tuple[str, ...] = ()
    """Host names (``*.example.org`` for sub-domains), IPs or CIDRs, optionally ``:port``; listed
    destinations are allowed even when private or loopback."""
    max_bytes: int = 10 * 1024 * 1024
    """Largest body accepted; more is ``url_too_large``."""
    connect_timeout_s: float = 3.0
    """Limit on resolving the host and on each TCP/TLS connect."""
    read_timeout_s: float = 5.0
    """Limit on each wait for bytes from the server (headers or body)."""
    total_timeout_s: float = 10.0
    """Limit on the whole fetch, redirects and body included."""
    max_redirects: int = 3
    """Redirect hops followed; one more is ``url_fetch_failed``."""
    allow_public: bool = True
    """False: only allow-listed destinations may be fetched at all."""
    rules: Allowlist = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        timeouts = (self.connect_timeout_s, self.read_timeout_s, self.total_timeout_s)
        if min(timeouts) <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        object.__setattr__(self, "rules", Allowlist.parse(self.allowlist))

    @staticmethod
    def parse_allowlist(text: str | Sequence[str] | None) -> tuple[str, ...]:
        """``"a.example, 10.0.0.0/8"`` (or a list) -> validated, stripped entries."""
        if text is None:
            return ()
        items = text.split(",") if isinstance(text, str) else list(text)
        entries = tuple(item.strip() for item in items if item.strip())
        Allowlist.parse(entries)  # raises ValueError on a bad entry
        return entries

    @classmethod
    def from_strings(
        cls,
        allowlist: str | Sequence[str] | None = None,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 5.0,
        total_timeout_s: float = 10.0,
        max_redirects: int = 3,
        allow_public: bool = True,
    ) -> FetchPolicy:
        """Build from a comma-separated allow-list (``"img.internal, 10.0.0.0/8"``) and limits."""
        return cls(
            allowlist=cls.parse_allowlist(allowlist),
            max_bytes=max_bytes,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            total_timeout_s=total_timeout_s,
            max_redirects=max_redirects,
            allow_public=allow_public,
        )

    @classmethod
    def from_settings(cls, settings: UrlSettings) -> FetchPolicy:
        """Build from the service settings (``CAPTION_URL_*`` and ``CAPTION_MAX_UPLOAD_BYTES``)."""
        return cls(
            allowlist=cls.parse_allowlist(settings.url_allowlist),
            max_bytes=settings.max_upload_bytes,
            connect_timeout_s=settings.url_connect_timeout_s,
            read_timeout_s=settings.url_read_timeout_s,
            total_timeout_s=settings.url_total_timeout_s,
            max_redirects=settings.url_max_redirects,
        )

    def httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout_s,
            read=self.read_timeout_s,
            write=self.read_timeout_s,
            pool=self.connect_timeout_s,
        )


class UrlSettings(Protocol):
    """The fields of ``service.settings.Settings`` that a policy is built from."""

    @property
    def url_allowlist(self) -> str | Sequence[str] | None: ...
    @property
    def max_upload_bytes(self) -> int: ...
    @property
    def url_connect_timeout_s(self) -> float: ...
    @property
    def url_read_timeout_s(self) -> float: ...
    @property
    def url_total_timeout_s(self) -> float: ...
    @property
    def url_max_redirects(self) -> int: ...


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    content_type: str
    final_url: str
    """The URL (with its host name, after redirects) the bytes came from."""


@dataclass(frozen=True)
class Target:
    """A validated destination: the logical URL and the addresses to connect to, in order."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host name or IP literal, lower case
    port: int
    addresses: tuple[IPAddress, ...]


def build_transport(
    *, verify: ssl.SSLContext | bool = True, max_connections: int | None = None
) -> httpx.AsyncHTTPTransport:
    """A transport that keeps no idle connections (each fetch connects to its pinned address)."""
    return httpx.AsyncHTTPTransport(
        verify=verify,
        trust_env=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
    )


def build_client(
    policy: FetchPolicy, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The client :func:`fetch_image` expects: no env proxies/netrc, no cookies, no reuse.

    ``transport`` defaults to :func:`build_transport`; pass one to trust a private CA or to wrap it.
    """
    return httpx.AsyncClient(
        transport=transport or build_transport(),
        follow_redirects=False,
        trust_env=False,
        timeout=policy.httpx_timeout(),
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        headers={"User-Agent": USER_AGENT},
    )


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Resolve with the OS resolver (``getaddrinfo`` in a thread via the event loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def parse_url(url: str) -> httpx.URL:
    """Parse and check the parts that need no network: length, scheme, credentials, host."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise BadRequest(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlForbidden(f"only http and https URLs may be fetched, not {parsed.scheme or '?'!r}")
    if parsed.userinfo:
        raise UrlForbidden("URLs with credentials (user@host) are not fetched")
    if not parsed.raw_host:
        raise BadRequest("URL has no host")
    return parsed


async def resolve_target(url: httpx.URL, policy: FetchPolicy, resolver: Resolver) -> Target:
    """Resolve the URL's host and check every address (one bad address refuses the URL)."""
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    port = url.port or (443 if url.scheme == "https" else 80)
    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = parse_ipv4_loose(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            async with asyncio.timeout(policy.connect_timeout_s):
                addresses = await resolver(host, port)
        except TimeoutError:
            raise UrlTimeout(
                f"resolving {host!r} took longer than {policy.connect_timeout_s}s"
            ) from None
        except (OSError, UnicodeError) as exc:
            raise UrlFetchFailed(f"could not resolve {host!r}: {exc}") from None
        if not addresses:
            raise UrlFetchFailed(f"could not resolve {host!r}: no addresses")
    for address in addresses:
        if policy.rules.allows(host, address, port):
            continue
        reason = forbidden_reason(address)
        if reason is not None:
            raise UrlForbidden(f"destination {host!r} resolves to a {reason} address ({address})")
        if not policy.allow_public:
            raise UrlForbidden(f"destination {host!r} is not on the allow-list")
    return Target(url=url, host=host, port=port, addresses=tuple(addresses))


def _pinned_request(
    client: httpx.AsyncClient, target: Target, address: IPAddress, policy: FetchPolicy
) -> httpx.Request:
    pinned = target.url.copy_with(host=str(address), fragment=None)
    extensions: dict[str, object] = {}
    if target.url.scheme == "https" and address != _literal(target.host):
        extensions["sni_hostname"] = target.host
    request = client.build_request(
        "GET",
        pinned,
        headers={
            "Host": target.url.netloc.decode("ascii"),
            "Accept": "image/*, application/octet-stream;q=0.9",
            "Accept-Encoding": "identity",
        },
        timeout=policy.httpx_timeout(),
        extensions=extensions,
    )
    request.headers.pop("Cookie", None)  # nothing from a shared client's jar goes out
    request.headers.pop("Authorization", None)
    return request


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_content_type(response: httpx.Response) -> str:
    raw = response.headers.get("Content-Type", "")
    media = raw.split(";", 1)[0].strip().lower()
    if media and not media.startswith(ACCEPTED_TYPES):
        raise UnsupportedMediaType(f"URL returned {media!r}, not an image")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"URL returned content encoded as {encoding!r}")
    return media or "application/octet-stream"


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise UrlTooLarge(f"URL body is {int(declared)} bytes, over the {max_bytes}-byte limit")
    body = bytearray()
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > max_bytes:
            raise UrlTooLarge(f"URL body exceeds the {max_bytes}-byte limit")
        body += chunk
    return bytes(body)


async def _send_pinned(
    client: httpx.AsyncClient, target: Target, policy: FetchPolicy
) -> httpx.Response:
    """Connect to the validated addresses in turn (e.g. IPv6 then IPv4) until one accepts."""
    for index, address in enumerate(target.addresses):
        request = _pinned_request(client, target, address, policy)
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if index == len(target.addresses) - 1:
                raise
    raise AssertionError("unreachable: a target has at least one address")


async def _fetch_hops(
    url: str, policy: FetchPolicy, client: httpx.AsyncClient, resolver: Resolver
) -> FetchedImage:
    current = parse_url(url)
    for hop in range(policy.max_redirects + 1):
        target = await resolve_target(current, policy, resolver)
        response = await _send_pinned(client, target, policy)
        try:
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise UrlFetchFailed(f"redirect {response.status_code} without a Location")
                if hop == policy.max_redirects:
                    raise UrlFetchFailed(f"more than {policy.max_redirects} redirects")
                try:
                    current = parse_url(str(current.join(location)))
                except BadRequest as exc:
                    raise UrlFetchFailed(f"redirect to an invalid URL: {exc.detail}") from None
                continue
            if not 200 <= response.status_code < 300:
                raise UrlFetchFailed(f"URL answered HTTP {response.status_code}")
            content_type = _check_content_type(response)
            data = await _read_capped(response, policy.max_bytes)
            return FetchedImage(data=data, content_type=content_type, final_url=str(current))
        finally:
            await response.aclose()
    raise AssertionError("unreachable: the loop returns or raises")


async def fetch_image(
    url: str,
    policy: FetchPolicy,
    client: httpx.AsyncClient,
    *,
    resolver: Resolver = system_resolve,
) -> FetchedImage:
    """Fetch ``url`` under ``policy``; raise a ``service.errors`` error with a stable code."""
    try:
        async with asyncio.timeout(policy.total_timeout_s):
            return await _fetch_hops(url, policy, client, resolver)
    except TimeoutError:
        raise UrlTimeout(f"fetching the URL took longer than {policy.total_timeout_s}s") from None
    except httpx.TimeoutException as exc:
        raise UrlTimeout(f"the URL's server was too slow ({type(exc).__name__})") from None
    except httpx.ConnectError as exc:
        raise UrlFetchFailed(f"could not connect to the URL's server: {exc}") from None
    except httpx.HTTPError as exc:
        raise UrlFetchFailed(f"fetching the URL failed: {type(exc).__name__}: {exc}") from None
