"""One bulk job: every input becomes exactly one row, whatever happens to it.

For each input, in order: read it (a local file in a worker thread, an http(s) URL through the
service's SSRF-guarded fetcher), hash its bytes, skip it when the output already answers it
(same id, bytes, model version and options; error rows too unless ``retry_failed``), caption it
once per distinct content (identical bytes share one computation), then append its row, flushed,
and write its XMP sidecar. Any failure is an error row with the API's code; the job never stops
on bad input. ``stop`` (SIGINT/SIGTERM) ends the intake; work already started finishes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batch.engines import Answer, Engine
from batch.rows import ErrorInfo, Row, resume_key
from batch.sidecar import SidecarError, sidecar_path, write_xmp_sidecar
from batch.sources import Item, read_item_bytes
from batch.store import ResultStore
from service.errors import CaptionError
from service.urlfetch import FetchPolicy, build_client, fetch_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobConfig:
    out: Path
    retry_failed: bool = False
    """Redo inputs whose earlier row is an error (ok rows are still skipped)."""
    force: bool = False
    """Recompute everything; the earlier output is kept as ``<out>.bak``."""
    xmp_sidecar: bool = False
    sidecar_dir: Path | None = None
    """Write sidecars under this folder, mirroring the tree below ``sidecar_root``."""
    sidecar_root: Path | None = None
    max_bytes: int = 10 * 1024 * 1024


@dataclass
class Summary:
    inputs: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """Error rows written this run, by code."""
    skipped: int = 0
    """Inputs an earlier run already answered."""
    duplicates: int = 0
    """Inputs whose bytes another input of this run already had (captioned once)."""
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items()))
        stopped = " (interrupted)" if self.interrupted else ""
        return (
            f"{self.ok} ok, {sum(self.errors.values())} errors{f' ({codes})' if codes else ''}, "
            f"{self.skipped} skipped, {self.duplicates} duplicates of {self.inputs} inputs "
            f"in {self.seconds:.1f} s: {self.images_per_s:.1f} images/s, "
            f"p50 {self.percentile_ms(0.5):.0f} ms, p95 {self.percentile_ms(0.95):.0f} ms{stopped}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "ok": self.ok,
            "errors": dict(self.errors),
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "p50_ms": round(self.percentile_ms(0.5), 1),
            "p95_ms": round(self.percentile_ms(0.95), 1),
            "interrupted": self.interrupted,
        }


Progress = Callable[[Summary], None]


@dataclass(frozen=True)
class _Where:
    """A row names a local input by ``path``, anything else by ``uri``."""

    path: str | None = None
    uri: str | None = None


class Job:
    def __init__(
        self,
        config: JobConfig,
        engine: Engine,
        store: ResultStore,
        fetch_policy: FetchPolicy,
        *,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.summary = Summary()
        self._fetch_policy = fetch_policy
        self._progress = progress or (lambda summary: None)
        self._by_content: dict[str, asyncio.Future[Answer]] = {}
        self._sidecars: dict[Path, str] = {}  # sidecar -> the input it belongs to, this run
        self._options_key = resume_key(
            Row(id="-", model=engine.model, options=engine.options, status="ok")
        )[2:]

    async def run(self, items: Sequence[Item], stop: asyncio.Event) -> Summary:
        """Caption ``items`` into the store until done or ``stop`` is set."""
        started = time.perf_counter()
        self.summary.inputs = len(items)
        slots = asyncio.Semaphore(self.engine.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with build_client(self._fetch_policy) as http:

            def finished(task: asyncio.Task[None]) -> None:
                tasks.discard(task)
                slots.release()

            for item in items:
                if stop.is_set():
                    break
                await slots.acquire()  # at most engine.concurrency inputs in flight
                if stop.is_set():
                    slots.release()
                    break
                task = asyncio.create_task(self._one(item, http))
                tasks.add(task)
                task.add_done_callback(finished)
            self.summary.interrupted = stop.is_set()
            if tasks:
                await asyncio.gather(*tasks)
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    async def _one(self, item: Item, http: Any) -> None:
        started = time.perf_counter()
        local = item.scheme is None
        where = _Where(path=item.uri) if local else _Where(uri=item.uri)
        digest: str | None = None
        try:
            data = await self._read(item, http)
            digest = hashlib.sha256(data).hexdigest()
            if self._answered(item.id, digest):
                self.summary.skipped += 1
                self._progress(self.summary)
                return
            answer = await self._caption(data, digest)
            row = self._ok_row(item, where, digest, answer)
            if self.config.xmp_sidecar and local and row.caption:
                try:
                    await asyncio.to_thread(self._sidecar, item, row.caption)
                except SidecarError as exc:  # the caption stays; --retry-failed writes it again
                    error = ErrorInfo(code="sidecar_failed", detail=str(exc))
                    row = replace(row, status="error", error=error)
        except CaptionError as exc:
            if digest is None and self._answered(item.id, None):
                self.summary.skipped += 1
                self._progress(self.summary)
                return
            row = self._error_row(item, where, digest, ErrorInfo(code=exc.code, detail=exc.detail))
        except Exception as exc:  # a bug must cost one row, not the job
            log.exception("input %s failed unexpectedly", item.id)
            row = self._error_row(
                item,
                where,
                digest,
                ErrorInfo(code="internal", detail=f"{type(exc).__name__}: {exc}"),
            )
        self.store.append(row)
        if row.status == "ok":
            self.summary.ok += 1
        else:
            self.summary.errors[row.error["code"] if row.error else "internal"] += 1
        self.summary.latencies_s.append(time.perf_counter() - started)
        self._progress(self.summary)

    async def _read(self, item: Item, http: Any) -> bytes:
        if item.is_url:
            fetched = await fetch_image(item.uri, self._fetch_policy, http)
            return fetched.data
        return await asyncio.to_thread(read_item_bytes, item, self.config.max_bytes)

    def _answered(self, item_id: str, digest: str | None) -> bool:
        """An earlier row answers this input: same bytes, model version and options."""
        if self.config.force:
            return False
        earlier = self.store.done(item_id)
        if (
            earlier is None
            or earlier.sha256 != digest
            or resume_key(earlier)[2:] != self._options_key
        ):
            return False
        return earlier.status == "ok" or not self.config.retry_failed

    async def _caption(self, data: bytes, digest: str) -> Answer:
        shared = self._by_content.get(digest)
        if shared is not None:
            self.summary.duplicates += 1
            return await asyncio.shield(shared)
        future = asyncio.ensure_future(self.engine.caption(data))
        self._by_content[digest] = future
        return await asyncio.shield(future)

    def _ok_row(self, item: Item, where: _Where, digest: str, answer: Answer) -> Row:
        n_best = self.engine.options["num_captions"] > 1
        return Row(
            id=item.id,
            path=where.path,
            uri=where.uri,
            sha256=digest,
            caption=answer.captions[0]["text"] if answer.captions else "",
            captions=answer.captions if n_best else None,
            model=self.engine.model,
            options=self.engine.options,
            status="ok",
            width=answer.width,
            height=answer.height,
            timings_ms=answer.timings_ms,
        )

    def _error_row(self, item: Item, where: _Where, digest: str | None, error: ErrorInfo) -> Row:
        return Row(
            id=item.id,
            path=where.path,
            uri=where.uri,
            sha256=digest,
            model=self.engine.model,
            options=self.engine.options,
            status="error",
            error=error,
        )

    def _sidecar(self, item: Item, caption: str) -> None:
        config = self.config
        try:
            target = sidecar_path(
                item.uri, sidecar_dir=config.sidecar_dir, root=config.sidecar_root
            )
        except ValueError as exc:  # outside the mirrored tree
            raise SidecarError(str(exc)) from exc
        owner = self._sidecars.setdefault(target, item.id)
        if owner != item.id:  # photo.jpg and photo.png share photo.xmp: never cross captions
            raise SidecarError(f"{target} is already the sidecar of {owner!r}")
        write_xmp_sidecar(
            item.uri, caption, sidecar_dir=config.sidecar_dir, root=config.sidecar_root
        )
