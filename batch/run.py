"""Wiring of ``captioner caption``: settings, engine, output store, progress bar and signals."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from batch.engines import Engine, InProcessEngine, RemoteEngine
from batch.job import Job, JobConfig, Summary
from batch.rows import Options
from batch.sources import Item
from batch.store import ResultStore
from service.settings import Settings


def job_settings(args: argparse.Namespace) -> Settings:
    """``CAPTION_*`` settings, with ``--bundle-dir`` winning over the environment."""
    settings = Settings()
    if args.bundle_dir is not None:
        settings = settings.model_copy(update={"bundle_dir": args.bundle_dir})
    return settings


def job_config(args: argparse.Namespace, settings: Settings) -> JobConfig:
    return JobConfig(
        out=Path(args.out),
        retry_failed=args.retry_failed,
        force=args.force,
        xmp_sidecar=args.xmp_sidecar or args.sidecar_dir is not None,
        sidecar_dir=args.sidecar_dir,
        sidecar_root=sidecar_root(args.inputs) if args.sidecar_dir is not None else None,
        max_bytes=settings.max_upload_bytes,
    )


def sidecar_root(inputs: Sequence[str]) -> Path:
    """The tree ``--sidecar-dir`` mirrors: the working directory when every local input is below
    it (paths as given), else the deepest folder holding them all."""
    local = [os.path.abspath(i) for i in inputs if i != "-" and "://" not in i]
    folders = [p if os.path.isdir(p) else os.path.dirname(p) for p in local]
    here = os.getcwd()
    if not folders or all(os.path.commonpath([here, f]) == here for f in folders):
        return Path(here)
    return Path(os.path.commonpath(folders))


async def start_engine(
    args: argparse.Namespace, settings: Settings, raw_options: dict[str, object]
) -> Engine:
    if args.endpoint is None:
        return InProcessEngine(settings, raw_options)
    from batch.endpoint import EndpointEngine

    client = await EndpointEngine.connect(
        args.endpoint, api_key=args.api_key, concurrency=args.concurrency
    )
    defaults = client.defaults  # resolved as the service resolves them: rows match in-process
    beam = args.beam_size or defaults.get("beam_size", settings.default_beam_size)
    options = Options(
        beam_size=beam,
        max_length=args.max_length or defaults.get("max_length", 0),  # 0: the service's default
        num_captions=args.num_captions or min(defaults.get("num_captions", 1), beam),
    )
    return RemoteEngine(client, options, args.concurrency)


class ProgressBar:
    """A tqdm bar (images/s, ETA, ok and errors); silent when stdout is no terminal or quiet."""

    def __init__(self, total: int, *, quiet: bool) -> None:
        self._bar = tqdm(
            total=total, unit="img", disable=quiet or not sys.stdout.isatty(), smoothing=0.1
        )
        self._shown = 0

    def __call__(self, summary: Summary) -> None:
        seen = summary.done + summary.skipped
        self._bar.update(seen - self._shown)
        self._shown = seen
        self._bar.set_postfix(ok=summary.ok, errors=sum(summary.errors.values()), refresh=False)

    def close(self) -> None:
        self._bar.close()


async def run_local(
    args: argparse.Namespace, items: Sequence[Item], raw_options: dict[str, object]
) -> tuple[Summary, signal.Signals | None]:
    """The in-process or ``--endpoint`` job; returns its summary and the signal that stopped it."""
    settings = job_settings(args)
    config = job_config(args, settings)
    stop = asyncio.Event()
    stopped_by: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        stopped_by.append(sig)
        stop.set()  # no new inputs; what is in flight finishes and is written

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    engine = await start_engine(args, settings, raw_options)
    bar = ProgressBar(len(items), quiet=args.quiet)
    try:
        with ResultStore.open(config.out, force=config.force) as store:
            job = Job(config, engine, store, settings, progress=bar)
            summary = await job.run(items, stop)
    finally:
        bar.close()
        await engine.close()
    return summary, (stopped_by[0] if stopped_by else None)


def run_ray(
    args: argparse.Namespace, items: Sequence[Item], raw_options: dict[str, object]
) -> Summary:
    from batch.ray_job import run_ray_job

    return run_ray_job(args, items, raw_options, job_settings(args))
