"""Async httpx load generator: open loop (constant or Poisson arrivals), closed loop, and a ramp.

- Open loop (``open_loop``): requests leave at precomputed arrival times, whatever the responses
  do, and each latency counts from its *scheduled* time (no coordinated omission). This is the
  model that shows queueing.
- Closed loop (``closed_loop``): N clients, each sends its next request when the previous one is
  answered; latency counts from the send. It shows the throughput at a concurrency, not the latency
  users would see at a rate.
- Ramp (``ramp``): open-loop steps at increasing rates until the knee: achieved throughput stops
  following the offered rate, p99 passes a bound, or errors appear.

Every loop is bounded: by its arrival count, its duration and a per-request client timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
from tqdm import tqdm

from loadtest import promscrape
from loadtest.payloads import PayloadPool, PreparedRequest
from loadtest.rawhttp import RawClient, RawHttpError
from loadtest.stats import CLIENT_ERROR, ClientStats, RequestRecord, StepResult, StepStats

Arrivals = Literal["poisson", "constant"]


@dataclass(frozen=True)
class Target:
    """Where the load goes."""

    base_url: str
    path: str = "/caption"
    timeout_s: float = 30.0
    """Client-side limit per request (from its send); past it the request counts as an error."""
    scrape_metrics: bool = True
    """Scrape ``/metrics`` before and after each step."""

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}{self.path}"


ClientKind = Literal["raw", "httpx"]
MAX_CONNECTIONS = 4096
"""Open loop needs more connections than the server can hold (queue + batches + decoding), or
the client itself caps the load and hides the server's overload behaviour (503s)."""


class LoadClient:
    """Sends the load (``raw``: ``loadtest.rawhttp``, lean; or ``httpx``) and, always through
    httpx, scrapes ``/metrics``. One per run; ``async with`` closes both."""

    def __init__(
        self, target: Target, kind: ClientKind = "raw", max_connections: int = MAX_CONNECTIONS
    ):
        if kind == "raw" and not target.base_url.startswith("http://"):
            kind = "httpx"  # the lean client speaks plain HTTP only (https: httpx)
        self.kind = kind
        self.max_connections = max_connections
        self.in_flight = 0
        self.peak_in_flight = 0
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=64, keepalive_expiry=2.0
            ),
            timeout=httpx.Timeout(None),
            trust_env=False,
        )
        self._raw = (
            RawClient(target.base_url, max_connections=max_connections) if kind == "raw" else None
        )
        self._path = urlsplit(target.url).path

    async def post(self, target: Target, request: PreparedRequest) -> tuple[int, bytes]:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._post(target, request)
        finally:
            self.in_flight -= 1

    async def _post(self, target: Target, request: PreparedRequest) -> tuple[int, bytes]:
        if self._raw is not None:
            response = await self._raw.post(self._path, request.content, request.headers)
            return response.status, response.body
        reply = await self.http.post(target.url, content=request.content, headers=request.headers)
        return reply.status_code, reply.content

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._raw is not None:
            await self._raw.aclose()
        await self.http.aclose()


def make_client(
    target: Target, kind: ClientKind = "raw", max_connections: int = MAX_CONNECTIONS
) -> LoadClient:
    return LoadClient(target, kind, max_connections)


def arrival_offsets(
    rate: float, duration_s: float, arrivals: Arrivals = "poisson", *, seed: int = 0
) -> list[float]:
    """Send times (seconds from the step start) of an open-loop step.

    ``constant``: one every ``1/rate`` s. ``poisson``: exponential gaps with mean ``1/rate``
    (a fixed seed, so runs are comparable).
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if arrivals == "constant":
        return [i / rate for i in range(int(rate * duration_s))]
    if arrivals != "poisson":
        raise ValueError(f"unknown arrivals {arrivals!r}")
    rng = np.random.default_rng(seed)
    expected = int(rate * duration_s)
    gaps = rng.exponential(1.0 / rate, size=expected + 10 * int(expected**0.5) + 20)
    times = np.cumsum(gaps) - gaps[0]
    return [float(t) for t in times[times < duration_s]]


def _error_code(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return str(code) if code is not None else None


async def send_one(
    client: LoadClient,
    target: Target,
    request: PreparedRequest,
    *,
    scheduled: float,
    t0: float,
) -> RequestRecord:
    """Send one request; never raises (transport errors become ``status=0`` records)."""
    loop = asyncio.get_running_loop()
    sent = loop.time() - t0
    status, code = CLIENT_ERROR, None
    try:
        async with asyncio.timeout(target.timeout_s):
            status, body = await client.post(target, request)
        if status != 200:
            code = _error_code(body)
        elif b'"caption"' not in body:
            code = "no_caption_in_response"
    except TimeoutError:
        code = "client_timeout"
    except (httpx.HTTPError, RawHttpError) as exc:
        code = type(exc).__name__
    return RequestRecord(scheduled, sent, loop.time() - t0, status, code)


@contextlib.contextmanager
def _bar(total: int | None, desc: str, enabled: bool) -> Iterator[tqdm]:
    bar = tqdm(total=total, desc=desc, unit="req", disable=not enabled, leave=False)
    try:
        yield bar
    finally:
        bar.close()


async def _scrape(client: LoadClient, target: Target) -> promscrape.Snapshot | None:
    if not target.scrape_metrics:
        return None
    try:
        return await promscrape.scrape(client.http, target.base_url)
    except (httpx.HTTPError, ValueError):
        return None


async def _with_metrics(
    client: LoadClient, target: Target, step: StepResult, before: promscrape.Snapshot | None
) -> StepResult:
    after = await _scrape(client, target)
    if before is not None and after is not None:
        step.server = promscrape.summarise_delta(after - before)
    return step


async def open_loop(
    client: LoadClient,
    target: Target,
    pool: PayloadPool,
    *,
    rate: float,
    duration_s: float,
    arrivals: Arrivals = "poisson",
    seed: int = 0,
    progress: bool = True,
) -> StepResult:
    """Send at ``rate`` per second for ``duration_s``, then wait for the stragglers."""
    offsets = arrival_offsets(rate, duration_s, arrivals, seed=seed)
    before = await _scrape(client, target)
    client.peak_in_flight = client.in_flight
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.005
    tasks: list[asyncio.Task[RequestRecord]] = []
    with _bar(len(offsets), f"open {rate:g}/s", progress) as bar:
        for offset in offsets:
            delay = t0 + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(
                send_one(client, target, pool.next(), scheduled=offset, t0=t0)
            )
            task.add_done_callback(lambda _t: bar.update())
            tasks.append(task)
        records = await _gather_bounded(tasks, offsets, t0, grace_s=target.timeout_s + 5.0)
    step = StepResult("open", duration_s, records, offered_rate=rate, arrivals=arrivals)
    step.client = ClientStats(
        peak_in_flight=client.peak_in_flight,
        max_connections=client.max_connections,
        connection_limited=client.peak_in_flight >= client.max_connections,
    )
    return await _with_metrics(client, target, step, before)


async def _gather_bounded(
    tasks: list[asyncio.Task[RequestRecord]], offsets: list[float], t0: float, *, grace_s: float
) -> list[RequestRecord]:
    """Every task's record; one still running after ``grace_s`` is cancelled and recorded as
    ``abandoned`` (never dropped: a missing slow request would flatter the percentiles)."""
    if not tasks:
        return []
    _done, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:  # send_one has its own timeout; this is a last-resort bound
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    now = asyncio.get_running_loop().time() - t0
    return [
        t.result()
        if t.done() and not t.cancelled()
        else RequestRecord(offset, offset, now, CLIENT_ERROR, "abandoned")
        for t, offset in zip(tasks, offsets, strict=True)
    ]


async def closed_loop(
    client: LoadClient,
    target: Target,
    pool: PayloadPool,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    progress: bool = True,
) -> StepResult:
    """``concurrency`` clients each send, await the answer and send again, for ``duration_s``."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError("concurrency must be >= 1 and duration positive")
    before = await _scrape(client, target)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + duration_s
    budget = [max_requests if max_requests is not None else -1]
    records: list[RequestRecord] = []

    async def client_loop(bar: tqdm) -> None:
        while loop.time() < end and budget[0] != 0:
            budget[0] -= 1
            now = loop.time() - t0
            records.append(await send_one(client, target, pool.next(), scheduled=now, t0=t0))
            bar.update()

    with _bar(max_requests, f"closed x{concurrency}", progress) as bar:
        await asyncio.gather(*(client_loop(bar) for _ in range(concurrency)))
    step = StepResult("closed", duration_s, records, concurrency=concurrency)
    return await _with_metrics(client, target, step, before)


@dataclass(frozen=True)
class KneeCriteria:
    """A step is past the knee when any of these fails."""

    p99_bound_ms: float
    follow_ratio: float = 0.95
    """Throughput must reach this share of the offered rate."""
    max_error_share: float = 0.01


@dataclass
class RampResult:
    """The steps of a ramp and where it bent."""

    steps: list[StepResult]
    criteria: KneeCriteria
    knee_rate: float | None = None
    """Offered rate of the first step past the knee (``None``: never reached)."""
    knee_reason: str | None = None
    max_sustained: float | None = None
    """Highest achieved throughput among the steps within every criterion."""
    max_sustained_rate: float | None = None
    """The offered rate of that step."""
    summaries: list[StepStats] = field(default_factory=list)
    """Each step's stats, ``past_knee`` set."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "criteria": dataclasses.asdict(self.criteria),
            "knee_rate": self.knee_rate,
            "knee_reason": self.knee_reason,
            "max_sustained_throughput": self.max_sustained,
            "max_sustained_rate": self.max_sustained_rate,
            "steps": [dataclasses.asdict(s) for s in self.summaries],
        }


def past_knee(stats: StepStats, criteria: KneeCriteria) -> str | None:
    """Why a step is past the knee, or ``None`` if the service kept up with it."""
    offered = stats.offered_window or stats.offered_actual or stats.offered_rate
    follow = criteria.follow_ratio
    if offered and stats.throughput < follow * offered:
        return (
            f"throughput {stats.throughput:.1f}/s < {follow:g} x offered "
            f"{offered:.1f}/s (arrivals in the same window)"
        )
    if stats.error_share > criteria.max_error_share:
        return f"error share {stats.error_share:.1%} > {criteria.max_error_share:.1%}"
    p99 = stats.latency_ms.get("p99")
    if p99 is not None and p99 > criteria.p99_bound_ms:
        return f"p99 {p99:.0f} ms > bound {criteria.p99_bound_ms:g} ms"
    return None


async def ramp(
    client: LoadClient,
    target: Target,
    pool: PayloadPool,
    *,
    start: float,
    step: float,
    max_rate: float,
    step_duration_s: float,
    p99_bound_ms: float,
    arrivals: Arrivals = "poisson",
    follow_ratio: float = 0.95,
    max_error_share: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> RampResult:
    """Open-loop steps at ``start, start+step, ...`` up to ``max_rate``; stops past the knee."""
    if start <= 0 or step <= 0 or max_rate < start:
        raise ValueError("need 0 < start <= max and step > 0")
    criteria = KneeCriteria(p99_bound_ms, follow_ratio, max_error_share)
    result = RampResult(steps=[], criteria=criteria)
    n_steps = int((max_rate - start) / step + 1e-9) + 1
    for i in range(n_steps):
        rate = start + i * step
        outcome = await open_loop(
            client,
            target,
            pool,
            rate=rate,
            duration_s=step_duration_s,
            arrivals=arrivals,
            seed=seed + i,
            progress=progress,
        )
        stats = outcome.stats()
        reason = past_knee(stats, criteria)
        stats = dataclasses.replace(stats, past_knee=reason)
        result.steps.append(outcome)
        result.summaries.append(stats)
        if progress:
            tqdm.write(step_line(stats))
        if reason is not None:
            result.knee_rate, result.knee_reason = rate, reason
            break
        if result.max_sustained is None or stats.throughput > result.max_sustained:
            result.max_sustained, result.max_sustained_rate = stats.throughput, rate
    return result


def step_line(stats: StepStats) -> str:
    p = " ".join(f"{k}={v:.0f}ms" for k, v in stats.latency_ms.items())
    offered = stats.offered_rate
    head = f"offered {offered:g}/s" if offered else f"closed x{stats.concurrency}"
    tail = f"  past knee: {stats.past_knee}" if stats.past_knee else ""
    return f"{head}: {stats.throughput:.1f}/s ok, {p}, errors {stats.error_share:.1%}{tail}"
