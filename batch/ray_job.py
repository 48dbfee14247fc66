"""``captioner caption --engine ray``: the same rows as the local job, computed on Ray Data.

Plan: folders are read with ``ray.data.read_binary_files(..., include_paths=True)``, every other
input (files, lists, manifests, URLs) goes in as (id, uri) rows that the workers read or fetch
themselves; ``map_batches`` runs ``CaptionActor`` (one ``Captioner`` per actor, ONNX Runtime on
exactly the actor's CPUs) over an ``ActorPoolStrategy``; the rows are written as Parquet shards
into a folder of this run's own (``<out>/run-<time>-<id>/``), then a ``_completion.json``.
Earlier runs are never overwritten: ``merge_runs`` reads them all back, latest ``ok`` row per
input first. Resume is ours, not Ray's (its checkpointing is alpha): the actors skip an input
whose (id, sha256) an earlier run of the same model version and options already answered.
Decoding happens inside the actors, so a corrupt or missing file is an error row; a block never
fails and nothing is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch import storage
from batch.engines import InProcessEngine
from batch.job import Summary
from batch.rows import COLUMNS, ErrorInfo, ModelInfo, Options, Row
from batch.sources import Item, read_item_bytes
from service.captioner import Captioner
from service.errors import CaptionError
from service.settings import Settings
from service.urlfetch import FetchPolicy, build_client, fetch_image

NESTED = ("captions", "model", "options", "error", "timings_ms")
SCHEMA = pa.schema(
    [
        (name, pa.int64() if name in ("width", "height") else pa.string())
        for name in COLUMNS
        if name != "status"
    ]
    + [("status", pa.string())]
)
COMPLETION = "_completion.json"


def run_dirs(out: str | Path) -> list[str]:
    """Earlier and current run folders under ``out`` (a path or ``gs://``), oldest first."""
    return storage.list_dirs(str(out), "run-")


def read_run_rows(run_dir: str) -> list[Row]:
    """Rows of one run's complete shards (a shard torn by a crash is left out)."""
    rows: list[Row] = []
    fs, _ = storage.filesystem(run_dir)
    for shard in storage.list_files(run_dir, ".parquet"):
        try:
            table = pq.read_table(storage.filesystem(shard)[1], filesystem=fs)
        except (pa.ArrowException, OSError):
            continue
        rows.extend(row_from_record(r) for r in table.to_pylist())
    return rows


def merge_runs(out: str | Path) -> list[Row]:
    """One row per input over every run under ``out``: its latest ``ok`` row, else its latest."""
    merged: dict[str, Row] = {}
    for run_dir in run_dirs(out):
        for row in read_run_rows(run_dir):
            earlier = merged.get(row.id)
            if earlier is None or row.status == "ok" or earlier.status != "ok":
                merged[row.id] = row
    return list(merged.values())


def row_record(row: Row) -> dict[str, Any]:
    """A row as a flat Parquet record: nested fields as JSON text (one schema for every shard)."""
    record = row.to_dict()
    for name in NESTED:
        if record[name] is not None:
            record[name] = json.dumps(record[name], ensure_ascii=False)
    return record


def row_from_record(record: dict[str, Any]) -> Row:
    data = dict(record)
    for name in NESTED:
        if data.get(name) is not None:
            data[name] = json.loads(data[name])
    return Row.from_dict(data)


class CaptionActor:
    """A Ray Data callable class: one ``Captioner`` per actor, loaded once, reused per batch."""

    def __init__(
        self,
        settings: dict[str, Any],
        raw_options: dict[str, object],
        done: frozenset[tuple[str, str | None]],
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._settings = Settings(**settings)
        self._engine: InProcessEngine = self._run(
            InProcessEngine.start(self._settings, raw_options)
        )
        self._policy = FetchPolicy.from_settings(self._settings)
        self._done = done

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = batch.to_pylist()
        rows = self._run(self._caption_all(records))
        return pa.Table.from_pylist([row_record(r) for r in rows if r is not None], SCHEMA)

    async def _caption_all(self, records: list[dict[str, Any]]) -> list[Row | None]:
        async with build_client(self._policy) as http:
            return list(await asyncio.gather(*(self._one(r, http) for r in records)))

    async def _one(self, record: dict[str, Any], http: Any) -> Row | None:
        item = Item(id=record["id"], uri=record["uri"], is_url=bool(record["is_url"]))
        engine = self._engine
        local = item.scheme is None
        path, uri = (item.uri, None) if local else (None, item.uri)
        digest = None
        try:
            data: bytes | None = record.get("data")
            if data is None:
                if item.is_url:
                    data = (await fetch_image(item.uri, self._policy, http)).data
                else:
                    readable = Item(id=item.id, uri=record["read"], is_url=False)
                    data = await asyncio.to_thread(
                        read_item_bytes, readable, self._settings.max_upload_bytes
                    )
            digest = hashlib.sha256(data).hexdigest()
            if (item.id, digest) in self._done:
                return None  # answered by an earlier run
            answer = await engine.caption(data)
        except CaptionError as exc:
            if digest is None and (item.id, None) in self._done:
                return None  # unreadable before too: redone only with --retry-failed
            return Row(
                id=item.id, path=path, uri=uri, sha256=digest, model=engine.model,
                options=engine.options, status="error",
                error=ErrorInfo(code=exc.code, detail=exc.detail),
            )  # fmt: skip
        n_best = engine.options["num_captions"] > 1
        return Row(
            id=item.id, path=path, uri=uri, sha256=digest,
            caption=answer.captions[0]["text"] if answer.captions else "",
            captions=answer.captions if n_best else None, model=engine.model,
            options=engine.options, status="ok", width=answer.width, height=answer.height,
            timings_ms=answer.timings_ms,
        )  # fmt: skip


def parse_actors(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    lo, hi = int(low), int(high or low)
    if not 1 <= lo <= hi:
        raise ValueError(f"--actors MIN:MAX needs 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def resolve(settings: Settings, raw_options: dict[str, object]) -> tuple[ModelInfo, Options]:
    """The model and the resolved options every actor will use (for the resume keys)."""
    captioner = Captioner.load(settings)
    try:
        options = captioner.rules.parse(raw_options)
        ref = captioner.model_ref
    finally:
        asyncio.run(captioner.close())
    return ModelInfo(name=ref.name, version=ref.version), Options(**options.as_dict())  # type: ignore[typeddict-item]


def run_ray_job(
    args: argparse.Namespace,
    items: Sequence[Item],
    raw_options: dict[str, object],
    settings: Settings,
) -> Summary:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray.data

    started = time.perf_counter()
    low, high = parse_actors(args.actors)
    cpus = args.cpus_per_actor
    # ONNX Runtime sized to the actor's CPUs, never the node's: one batch at a time on them
    actor_settings = settings.model_copy(
        update={"intra_op_threads": cpus, "max_concurrent_batches": 1, "cache_size": 0}
    )
    model, options = resolve(actor_settings, raw_options)
    out = str(args.out)
    done: set[tuple[str, str | None]] = set()
    if not args.force:
        for row in merge_runs(out):
            same = row.model["version"] == model["version"] and row.options == options
            if same and (row.status == "ok" or not args.retry_failed):
                done.add((row.id, row.sha256))
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    run_dir = storage.join(out, f"run-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    storage.make_dir(run_dir)
    # local paths are read by workers whose working directory is not ours: pass them absolute
    records = [
        {"id": i.id, "uri": i.uri, "is_url": i.is_url, "read": _absolute(i), "data": None}
        for i in items
    ]
    if records:
        captioned = ray.data.from_items(records).map_batches(
            CaptionActor,
            batch_format="pyarrow",
            batch_size=args.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=cpus,
            fn_constructor_kwargs={
                "settings": _settings_dict(actor_settings),
                "raw_options": raw_options,
                "done": frozenset(done),
            },
        )
        captioned.write_parquet(run_dir)
    rows = read_run_rows(run_dir)
    summary = Summary(inputs=len(items), seconds=time.perf_counter() - started)
    for row in rows:
        if row.status == "ok":
            summary.ok += 1
        else:
            summary.errors[row.error["code"] if row.error else "internal"] += 1
    summary.skipped = len(items) - len(rows)
    completion = {
        "run": run_dir.rstrip("/").rsplit("/", 1)[-1],
        "inputs": len(items),
        "rows": len(rows),
        "ok": summary.ok,
        "errors": dict(summary.errors),
        "skipped": summary.skipped,
        "model": model,
        "options": options,
        "seconds": round(summary.seconds, 3),
    }
    storage.write_text(storage.join(run_dir, COMPLETION), json.dumps(completion, indent=2) + "\n")
    return summary


def _absolute(item: Item) -> str:
    return item.uri if item.scheme is not None else os.path.abspath(item.uri)


def _settings_dict(settings: Settings) -> dict[str, Any]:
    return {
        name: getattr(settings, name)
        for name in type(settings).model_fields
        if name not in ("api_keys",)
    }
