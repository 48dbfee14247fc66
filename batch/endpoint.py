"""The ``--endpoint URL`` engine: caption image bytes with a running captioner service.

Rule: at most ``concurrency`` requests in flight; 503/429 wait their ``Retry-After`` (seconds or
an HTTP date, cut to ``backoff_max_s``) plus jitter; transport errors (connect, read, timeouts)
and 502/504 wait an exponential jittered backoff; each request is retried at most
``max_retries`` times; any other 4xx is never retried. Why: a bulk run must slow down for an
overloaded or scaling service (an HPA adds pods in minutes) without hammering it, and must not
repeat a request the service has already judged.

A request that fails for good raises ``RemoteError``, a ``service.errors.CaptionError`` carrying
the service's ``code``, ``detail`` and status (``endpoint_unreachable`` when the service never
answered). A retry keeps its concurrency slot while it waits, so a struggling service sees fewer
requests, not the same number sooner.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx

from service.errors import CaptionError

Sleep = Callable[[float], Awaitable[None]]

RETRY_AFTER_STATUSES = frozenset({429, 503})
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class RemoteError(CaptionError):
    """An error answered by (or about) the remote service, with its own status and code."""

    def __init__(
        self,
        detail: str,
        *,
        code: str,
        status_code: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail, headers=headers)
        # instance attributes shadow CaptionError's ClassVars (mypy refuses plain assignment)
        vars(self).update(code=code, status_code=status_code)


@dataclass(frozen=True)
class EndpointAnswer:
    captions: list[tuple[str, float]]
    """(text, score), best first."""
    model_name: str
    model_version: str
    timings_ms: dict[str, float]
    request_id: str


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay seconds or HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a zone-less one ("-0000") is taken as such
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_from(response: httpx.Response) -> RemoteError:
    """The service's ``{"detail", "code"}`` (or a stand-in for a body that is not one)."""
    code, detail = f"http_{response.status_code}", response.text[:500]
    body = _json_or_none(response)
    if body is not None:
        code = str(body.get("code") or code)
        detail = str(body.get("detail") or detail)
    retry_after = response.headers.get("Retry-After")
    headers = {"Retry-After": retry_after} if retry_after else None
    return RemoteError(detail, code=code, status_code=response.status_code, headers=headers)


def _answer_from(response: httpx.Response) -> EndpointAnswer:
    try:
        body = response.json()
        return EndpointAnswer(
            captions=[(str(c["text"]), float(c["score"])) for c in body["captions"]],
            model_name=str(body["model"]["name"]),
            model_version=str(body["model"]["version"]),
            timings_ms={str(k): float(v) for k, v in body.get("timings_ms", {}).items()},
            request_id=str(body.get("request_id", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteError(
            f"unreadable caption response: {exc!r}", code="invalid_response", status_code=502
        ) from exc


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    """Retries after the first attempt (transport errors, 429, 502, 503, 504)."""
    backoff_base_s: float = 0.5
    """First backoff step; doubles each retry."""
    backoff_max_s: float = 30.0
    """Longest wait, Retry-After included."""
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("max_retries and backoff times must be >= 0")

    def backoff(self, retry: int) -> float:
        """Equal jitter: half the exponential step, plus up to half again at random."""
        step = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry)
        return step / 2 + self.rng.uniform(0, step / 2)

    def delay(self, retry: int, response: httpx.Response | None) -> float:
        """Before retry number ``retry`` (0-based) after ``response`` (None: no answer)."""
        if response is not None and response.status_code in RETRY_AFTER_STATUSES:
            asked = parse_retry_after(response.headers.get("Retry-After"))
            if asked is not None:  # never sooner than asked; longer if the backoff has grown
                asked = min(asked, self.backoff_max_s)
                jittered = asked + self.rng.uniform(0, min(asked, self.backoff_base_s))
                return max(jittered, self.backoff(retry))
        return self.backoff(retry)


class EndpointEngine:
    """Build with ``await EndpointEngine.connect(url, ...)``; close with ``aclose`` or
    ``async with``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        model_name: str,
        model_version: str,
        defaults: dict[str, int] | None = None,
        concurrency: int,
        policy: RetryPolicy,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.defaults = defaults or {}
        """The service's default options (``/readyz``): beam_size, max_length, num_captions."""
        self.concurrency = concurrency
        """Requests in flight at most."""
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)
        self._policy = policy
        self._sleep = sleep

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        timeout_s: float = 60.0,
        ready_timeout_s: float = 120.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> EndpointEngine:
        """Wait (up to ``ready_timeout_s``) until ``/readyz`` says ready; record its model."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if httpx.URL(url).scheme not in ("http", "https"):
            raise ValueError(f"endpoint must be an http(s) URL, got {url!r}")
        policy = RetryPolicy(max_retries, backoff_base_s, backoff_max_s, rng or random.Random())
        client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=concurrency + 1),  # + 1: /readyz
        )
        try:
            name, version, defaults = await _wait_ready(client, policy, sleep, ready_timeout_s)
        except BaseException:
            await client.aclose()
            raise
        return cls(
            client,
            model_name=name,
            model_version=version,
            defaults=defaults,
            concurrency=concurrency,
            policy=policy,
            sleep=sleep,
        )

    async def caption(
        self, data: bytes, *, beam_size: int, max_length: int | None, num_captions: int
    ) -> EndpointAnswer:
        params = {"beam_size": beam_size, "num_captions": num_captions}
        if max_length is not None:
            params["max_length"] = max_length
        async with self._slots:  # held through retry waits too
            response = await self._send(
                "/caption",
                content=data,
                params=params,
                headers={"Content-Type": "application/octet-stream"},
            )
        if response.status_code != 200:
            raise _error_from(response)
        return _answer_from(response)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST until an answer is not retryable, or the last answer once retries are spent."""
        retries = self._policy.max_retries
        for retry in range(retries + 1):
            try:
                response = await self._client.post(path, **kwargs)
            except httpx.TransportError as exc:
                if retry == retries:
                    raise _unreachable(self._client, exc, retry + 1) from exc
                await self._sleep(self._policy.delay(retry, None))
                continue
            if response.status_code not in RETRY_STATUSES or retry == retries:
                return response
            await self._sleep(self._policy.delay(retry, response))
        raise AssertionError("unreachable")  # the last round returns or raises


async def _wait_ready(
    client: httpx.AsyncClient, policy: RetryPolicy, sleep: Sleep, timeout_s: float
) -> tuple[str, str, dict[str, int]]:
    """Poll ``/readyz`` until ready: (model name, version, default options). Not-ready answers
    are waited out up
    to ``timeout_s`` (on the clock and in the delays asked for); transport errors are retried
    ``max_retries`` times."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waited, failures, rounds = 0.0, 0, 0
    while True:
        try:
            response = await client.get("/readyz")
        except httpx.TransportError as exc:
            if failures >= policy.max_retries:
                raise _unreachable(client, exc, failures + 1) from exc
            delay = policy.backoff(failures)
            failures += 1
        else:
            body = _json_or_none(response)
            if response.status_code == 200 and body is not None and body.get("ready"):
                model = body.get("model")
                if not isinstance(model, dict) or not {"name", "version"} <= model.keys():
                    raise RemoteError(
                        "/readyz names no model", code="invalid_response", status_code=502
                    )
                defaults = body.get("defaults")
                known = defaults if isinstance(defaults, dict) else {}
                options = {k: int(v) for k, v in known.items() if isinstance(v, int)}
                return str(model["name"]), str(model["version"]), options
            if response.status_code not in RETRY_STATUSES | {200}:
                raise _error_from(response)
            delay = policy.delay(rounds, response)
            rounds += 1
            if waited + delay > timeout_s or loop.time() + delay > deadline:
                last = _error_from(response)
                raise RemoteError(
                    f"not ready within {timeout_s:g} s: {last.detail}",
                    code=last.code,
                    status_code=last.status_code,
                    headers=last.headers,
                )
        waited += delay
        await sleep(delay)


def _unreachable(client: httpx.AsyncClient, exc: Exception, attempts: int) -> RemoteError:
    return RemoteError(
        f"{client.base_url} did not answer after {attempts} attempts: {type(exc).__name__} {exc}",
        code="endpoint_unreachable",
        status_code=503,
    )


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None
