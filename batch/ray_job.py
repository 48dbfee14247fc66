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
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batch import storage
from batch.engines import InProcessEngine
from batch.job import Summary
from batch.rows import COLUMNS, ErrorInfo, ModelInfo, Options, Row
from batch.sources import IMAGE_PATTERNS, Item, read_item_bytes, uri_scheme
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
INPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("is_url", pa.bool_()),
        ("read", pa.string()),
        ("has_data", pa.bool_()),
        ("data", pa.binary()),
    ]
)
IMAGE_EXTENSIONS = tuple(p.removeprefix("*.") for p in IMAGE_PATTERNS)


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
        self._engine = InProcessEngine(self._settings, raw_options)
        self._run(self._engine.start())  # once per actor: every batch reuses the model
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
            data: bytes | None = record["data"] if record["has_data"] else None
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
    """The model and the resolved options every actor will use (for the resume keys), from the
    bundle's manifest: the driver opens no ONNX Runtime session."""
    engine = InProcessEngine(settings, raw_options)
    return engine.model, engine.options


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
    if "://" not in out:  # Ray's writers run in other working directories
        out = os.path.abspath(out)
    done: set[tuple[str, str | None]] = set()
    earlier = [] if args.force else merge_runs(out)
    if not args.force:
        for row in earlier:
            same = row.model["version"] == model["version"] and row.options == options
            if same and (row.status == "ok" or not args.retry_failed):
                done.add((row.id, row.sha256))
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    run_dir = storage.join(out, f"run-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    storage.make_dir(run_dir)
    inputs = input_dataset(args, items)
    if inputs is not None:
        captioned = inputs.map_batches(
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
        # writing a shard is I/O: it must not wait for a CPU that the caption actors hold
        captioned.write_parquet(run_dir, ray_remote_args={"num_cpus": 0})
    rows = read_run_rows(run_dir)
    rows += reconcile(run_dir, items, rows, earlier, model, options)
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


def input_dataset(args: argparse.Namespace, items: Sequence[Item]) -> Any:
    """The job's inputs as (id, uri, is_url, read, has_data, data) rows, or None if none.

    Folders (with the default patterns) are listed and read by ``read_binary_files``, manifests
    by Ray's reader for their format; every other input goes in as its (id, uri) and is read or
    fetched by the actors."""
    import ray.data

    origins = {i.origin for i in items if i.origin}
    folders = [f for f in origins if args.patterns is None and os.path.isdir(f)]
    manifests = [m for m in origins if m not in folders and Path(m).suffix.lower() in READERS]
    by_ray = set(folders) | set(manifests)
    rest = [i for i in items if i.origin not in by_ray]
    parts = [
        ray.data.read_binary_files(
            os.path.abspath(folder), include_paths=True, file_extensions=list(IMAGE_EXTENSIONS)
        ).map_batches(
            folder_records,  # type: ignore[arg-type]  # extra keyword arguments via fn_kwargs
            fn_kwargs={"folder": folder, "root": os.path.abspath(folder)},
            batch_format="pyarrow",
        )
        for folder in sorted(folders)
    ]
    for manifest in sorted(manifests):
        suffix = Path(manifest).suffix.lower()
        options: dict[str, Any] = {}
        if suffix == ".csv":  # ids stay text, as written ("007" is not 7)
            text = {"id": pa.string(), "uri": pa.string()}
            options["convert_options"] = pacsv.ConvertOptions(column_types=text)
        reader = getattr(ray.data, READERS[suffix])
        parts.append(
            reader(os.path.abspath(manifest), **options).map_batches(
                manifest_records,
                fn_kwargs={"cwd": os.getcwd()},
                batch_format="pyarrow",
                batch_size=args.batch_size,
            )
        )
    if rest:
        # local paths are read by workers whose working directory is not ours: pass them absolute
        records = [_record(i.id, i.uri, os.getcwd()) for i in rest]
        table = pa.Table.from_pylist(records, INPUT_SCHEMA)
        step = max(1, args.batch_size)  # one block per batch: the actor pool gets them all
        parts.append(
            ray.data.from_arrow([table.slice(i, step) for i in range(0, len(table), step)])
        )
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


READERS = {
    ".csv": "read_csv",
    ".jsonl": "read_json",
    ".ndjson": "read_json",
    ".parquet": "read_parquet",
}
"""Ray Data's reader for each manifest format (``uri`` column, optional ``id``)."""


def manifest_records(batch: pa.Table, cwd: str) -> pa.Table:
    """Manifest rows -> input rows: ``id`` as text (else the uri), paths relative to ``cwd``."""
    uris = batch.column("uri").to_pylist()
    ids = batch.column("id").to_pylist() if "id" in batch.column_names else [None] * len(uris)
    records = [
        _record(_id_text(item_id) or str(uri), str(uri), cwd)
        for uri, item_id in zip(uris, ids, strict=True)
    ]
    return pa.Table.from_pylist(records, INPUT_SCHEMA)


def _id_text(value: object) -> str | None:
    """A manifest id as ``batch.sources`` reads it (whole numbers without a decimal point)."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _record(item_id: str, uri: str, cwd: str) -> dict[str, Any]:
    local = uri_scheme(uri) is None
    return {
        "id": item_id,
        "uri": uri,
        "is_url": uri_scheme(uri) in ("http", "https"),
        "read": os.path.join(cwd, uri) if local else uri,
        "has_data": False,
        "data": b"",
    }


def folder_records(batch: pa.Table, folder: str, root: str) -> pa.Table:
    """``read_binary_files`` rows -> input rows with the ids ``batch.sources`` gives them
    (``root``: the folder made absolute on the driver; workers run elsewhere)."""
    records = []
    paths, blobs = batch.column("path").to_pylist(), batch.column("bytes").to_pylist()
    for path, data in zip(paths, blobs, strict=True):
        absolute = path if os.path.isabs(path) else os.path.join(os.sep, path)
        item_id = os.path.join(folder, os.path.relpath(absolute, root))
        records.append(
            {"id": item_id, "uri": item_id, "is_url": False, "read": absolute,
             "has_data": True, "data": data}
        )  # fmt: skip
    return pa.Table.from_pylist(records, INPUT_SCHEMA)


def reconcile(
    run_dir: str,
    items: Sequence[Item],
    rows: list[Row],
    earlier: list[Row],
    model: ModelInfo,
    options: Options,
) -> list[Row]:
    """Error rows for inputs that came back from nowhere (gone from their folder mid-run, say):
    every input has a row, this run's or an earlier one's, never silently none."""
    seen = {row.id for row in rows} | {row.id for row in earlier}
    missing = [
        Row(
            id=i.id,
            path=None if i.scheme else i.uri,
            uri=i.uri if i.scheme else None,
            model=model,
            options=options,
            status="error",
            error=ErrorInfo(code="not_processed", detail="no row came back for this input"),
        )  # fmt: skip
        for i in items
        if i.id not in seen
    ]
    if missing:
        fs, path = storage.filesystem(storage.join(run_dir, "reconciled.parquet"))
        table = pa.Table.from_pylist([row_record(r) for r in missing], SCHEMA)
        pq.write_table(table, path, filesystem=fs)
    return missing


def _settings_dict(settings: Settings) -> dict[str, Any]:
    return {
        name: getattr(settings, name)
        for name in type(settings).model_fields
        if name not in ("api_keys",)
    }
