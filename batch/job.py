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
from batch.statindex import StatIndex, signature
from batch.store import ResultStore
from service.errors import CaptionError
from service.settings import Settings

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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_hashed(item: Item, max_bytes: int) -> tuple[bytes, str]:
    data = read_item_bytes(item, max_bytes)
    return data, _sha256(data)


class EngineFailed(RuntimeError):
    """The engine cannot start (a damaged bundle, say): the job stops instead of failing every
    input the same way."""


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
        settings: Settings,
        *,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.summary = Summary()
        self._settings = settings
        self._http: Any = None  # the URL client, made for the first URL input
        self._engine_ready: asyncio.Task[None] | None = None
        self._index = (
            StatIndex.load(config.out) if not config.force else StatIndex.empty(config.out)
        )
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
        try:

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
                task = asyncio.create_task(self._one(item))
                tasks.add(task)
                task.add_done_callback(finished)
            self.summary.interrupted = stop.is_set()
            if tasks:
                try:
                    await asyncio.gather(*tasks)
                except BaseException:  # stop the rest before the output is closed under them
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
        finally:
            if self._http is not None:
                await self._http.aclose()
            self._index.save()
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    async def _one(self, item: Item) -> None:
        started = time.perf_counter()
        local = item.scheme is None
        where = _Where(path=item.uri) if local else _Where(uri=item.uri)
        digest: str | None = None
        try:
            sig = signature(item.uri) if local else None  # before reading: a later change shows
            known = self._index.known(item.id, sig)
            if known is not None and self._answered(item.id, known):
                self.summary.skipped += 1  # unchanged since hashed: not even read again
                self._progress(self.summary)
                return
            data, digest = await self._read(item)
            self._index.record(item.id, sig, digest)
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
        except EngineFailed:
            raise  # no input can be captioned: the job stops (its output stays resumable)
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

    async def _read(self, item: Item) -> tuple[bytes, str]:
        """The item's bytes and their sha256 (hashed in a worker thread: hashlib lets go of the
        GIL, so the hashes of a rerun spread over the cores)."""
        if item.is_url:
            from service.urlfetch import FetchPolicy, build_client, fetch_image

            policy = FetchPolicy.from_settings(self._settings)
            if self._http is None:
                self._http = build_client(policy)
            fetched = await fetch_image(item.uri, policy, self._http)
            return fetched.data, await asyncio.to_thread(_sha256, fetched.data)
        return await asyncio.to_thread(_read_hashed, item, self.config.max_bytes)

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
        # registered before the first await, so identical bytes arriving meanwhile join it
        future = asyncio.ensure_future(self._caption_once(data))
        self._by_content[digest] = future
        return await asyncio.shield(future)

    async def _caption_once(self, data: bytes) -> Answer:
        await self._start_engine()
        return await self.engine.caption(data)

    async def _start_engine(self) -> None:
        """Start the engine once, when the first input needs it (a rerun may need none)."""
        if self._engine_ready is None:
            self._engine_ready = asyncio.ensure_future(self.engine.start())
        try:
            await asyncio.shield(self._engine_ready)
        except Exception as exc:
            raise EngineFailed(f"the captioning engine could not start: {exc}") from exc

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
