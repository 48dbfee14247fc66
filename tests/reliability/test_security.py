"""API keys, per-client rate limits, CORS and the web page's security headers, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from html.parser import HTMLParser

import httpx
import pytest

from service.security import TokenBucketLimiter, key_id, presented_key
from service.settings import Settings
from tests.reliability.conftest import documented_errors
from tests.service import images
from tests.service.conftest import RunningServer

pytestmark = pytest.mark.e2e

PNG = images.png_1x1()
IMAGE = {"Content-Type": "image/png"}


def caption(url: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/caption", content=PNG, headers={**IMAGE, **headers}, timeout=30)


# --- authentication --------------------------------------------------------------------------
def test_no_key_needed_by_default(server: Callable[..., RunningServer]) -> None:
    running = server()
    assert caption(running.url).status_code == 200
    assert "www-authenticate" not in caption(running.url).headers


def test_api_keys(server: Callable[..., RunningServer]) -> None:
    running = server(api_keys="alpha-key, beta-key")
    missing = caption(running.url)
    assert (missing.status_code, missing.json()["code"]) == (401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.headers["x-request-id"]
    assert documented_errors()["unauthorized"] == 401
    wrong = caption(running.url, Authorization="Bearer gamma-key")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthorized")
    assert "invalid" in wrong.json()["detail"]
    assert caption(running.url, **{"X-API-Key": "alpha-key"}).status_code == 200  # prefix no
    assert caption(running.url, Authorization="Bearer beta-key").status_code == 200
    assert caption(running.url, Authorization="bearer  alpha-key").status_code == 200
    assert caption(running.url, Authorization="Basic YWxwaGEta2V5").status_code == 401
    assert caption(running.url, Authorization="Bearer alpha-ke").status_code == 401
    batch = httpx.post(f"{running.url}/caption/batch", json={"images": []}, timeout=30)
    assert batch.status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):  # probes and scraping stay open
        assert httpx.get(f"{running.url}{path}").status_code == 200, path
    assert running.sample("caption_rejected_total", {"reason": "unauthorized"}) == 5
    assert running.sample("caption_requests_total", {"endpoint": "other", "code": "401"}) == 5


def test_public_paths_are_configurable(server: Callable[..., RunningServer]) -> None:
    running = server(api_keys="k", public_paths="/healthz,/readyz")
    assert httpx.get(f"{running.url}/healthz").status_code == 200
    assert httpx.get(f"{running.url}/metrics").status_code == 401
    assert httpx.get(f"{running.url}/metrics", headers={"X-API-Key": "k"}).status_code == 200


def test_keys_are_not_leaked_by_settings() -> None:
    settings = Settings(api_keys="s3cret-1,s3cret-2")
    assert settings.api_key_list == ("s3cret-1", "s3cret-2")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    assert key_id("s3cret-1").startswith("key:") and "s3cret" not in key_id("s3cret-1")


def test_presented_key_forms() -> None:
    assert presented_key([(b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"x-api-key", b" abc ")]) == "abc"
    assert presented_key([(b"authorization", b"Bearer ")]) is None
    assert presented_key([(b"authorization", b"Token abc")]) is None
    assert presented_key([]) is None


# --- rate limiting ---------------------------------------------------------------------------
def test_token_bucket() -> None:
    bucket = TokenBucketLimiter(rate=2.0, burst=3)
    assert [bucket.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a", now=0.0) == pytest.approx(0.5)  # empty: a token in 1/rate s
    assert bucket.take("b", now=0.0) == 0.0  # another client has its own bucket
    assert bucket.take("a", now=0.5) == 0.0  # refilled one token
    assert bucket.take("a", now=100.0) == 0.0  # refill is capped at the burst
    assert [bucket.take("a", now=100.0) for _ in range(3)][-1] > 0
    small = TokenBucketLimiter(rate=1.0, burst=1, max_clients=100)
    for i in range(1000):
        small.take(f"client-{i}", now=float(i))
    assert len(small) == 100  # memory bounded however many clients come and go
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate=0, burst=1)


def test_rate_limit_per_ip(server: Callable[..., RunningServer]) -> None:
    running = server(rate_limit_per_s=0.5, rate_limit_burst=3)
    codes = [caption(running.url).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    limited = caption(running.url)
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert documented_errors()["rate_limited"] == 429
    other = httpx.HTTPTransport(local_address="127.0.0.2")  # another client address
    with httpx.Client(transport=other, timeout=30) as client:
        r = client.post(f"{running.url}/caption", content=PNG, headers=IMAGE)
        assert r.status_code == 200
    for _ in range(5):  # probes are never limited
        assert httpx.get(f"{running.url}/readyz").status_code == 200
    time.sleep(2.1)
    assert caption(running.url).status_code == 200  # a token came back
    assert running.sample("caption_rejected_total", {"reason": "rate_limited"}) == 3


def test_rate_limit_per_api_key(server: Callable[..., RunningServer]) -> None:
    running = server(api_keys="one,two", rate_limit_per_s=0.5, rate_limit_burst=2)
    one = [caption(running.url, **{"X-API-Key": "one"}).status_code for _ in range(3)]
    two = [caption(running.url, **{"X-API-Key": "two"}).status_code for _ in range(2)]
    assert one == [200, 200, 429] and two == [200, 200]
    assert 1 <= int(caption(running.url, **{"X-API-Key": "one"}).headers["retry-after"]) <= 2
    assert caption(running.url).status_code == 401  # no key: refused before the limiter


# --- CORS ------------------------------------------------------------------------------------
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_no_cors_by_default(server: Callable[..., RunningServer]) -> None:
    running = server()
    r = caption(running.url, Origin="https://evil.example")
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins(server: Callable[..., RunningServer]) -> None:
    running = server(cors_origins="https://app.example.org", api_keys="k")
    origin = {"Origin": "https://app.example.org"}
    pre = httpx.options(f"{running.url}/caption", headers={**origin, **PREFLIGHT})
    assert pre.status_code == 200  # preflights carry no key and are not refused
    assert pre.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = caption(running.url, Authorization="Bearer k", **origin)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    denied = caption(running.url, **origin)  # 401 still readable by the allowed page
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "https://app.example.org"
    evil = {"Origin": "https://evil.example"}
    pre = httpx.options(f"{running.url}/caption", headers={**evil, **PREFLIGHT})
    assert pre.status_code == 400
    assert "access-control-allow-origin" not in pre.headers
    r = caption(running.url, Authorization="Bearer k", **evil)
    assert "access-control-allow-origin" not in r.headers


# --- security headers ------------------------------------------------------------------------
class _Inline(HTMLParser):
    """Collects the text of every <script> and <style> element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.current: str | None = None
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.blocks:
            self.current = tag
            self.blocks[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        self.current = None

    def handle_data(self, data: str) -> None:
        if self.current:
            self.blocks[self.current][-1] += data


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_page_security_headers(server: Callable[..., RunningServer]) -> None:
    running = server()
    page = httpx.get(f"{running.url}/")
    assert page.status_code == 200
    csp = {
        part.split()[0]: part.split()[1:]
        for part in page.headers["content-security-policy"].split("; ")
    }
    assert csp["default-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    parser = _Inline()
    parser.feed(page.text)
    assert parser.blocks["script"] and parser.blocks["style"]
    assert sorted(csp["script-src"]) == sorted(map(_sha256, parser.blocks["script"]))
    assert sorted(csp["style-src"]) == sorted(map(_sha256, parser.blocks["style"]))
    assert "<script src" not in page.text  # nothing external the policy would need to allow
    for r in (page, caption(running.url), httpx.get(f"{running.url}/nope")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in caption(running.url).headers
