"""``python -m loadtest run|ramp|bench``: drive load at a running service, or benchmark everything.

    python -m loadtest run --url http://127.0.0.1:8000 --mode open --rate 50 --duration 30 \\
        --arrivals poisson --payload upload
    python -m loadtest run --url http://127.0.0.1:8000 --mode closed --concurrency 8 --duration 30
    python -m loadtest ramp --url http://127.0.0.1:8000 --start 10 --step 10 --max 200 \\
        --step-duration 10 --p99-bound-ms 500
    python -m loadtest bench [--quick]          # what `make bench` runs
    python -m loadtest bulk [--quick] [--images N]   # bench phase (g) alone: captioner caption
    python -m loadtest sweep --set CAPTION_MAX_BATCH_SIZE=4,8,16   # tune service settings

``run`` and ``ramp`` write a JSON of per-step results and a PNG (``--out``, ``--plot``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtest import generator, report
from loadtest.payloads import PAYLOAD_KINDS, PayloadKind, PayloadPool, find_images
from loadtest.static_server import StaticServer
from loadtest.stats import StepStats


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    p.add_argument("--payload", choices=PAYLOAD_KINDS, default="upload")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of images, or a Flickr8k folder (test split used); "
        "default $CAPTION_DATA_DIR or ../shared/data/flickr8k",
    )
    p.add_argument("--limit-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (s)")
    p.add_argument(
        "--max-connections",
        type=int,
        default=generator.MAX_CONNECTIONS,
        help="client connection cap; must exceed what the server can hold in open loop",
    )
    p.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client for the load: raw (lean, default) or httpx",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-metrics", action="store_true", help="do not scrape /metrics")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest/results.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one open- or closed-loop step")
    _common(run)
    run.add_argument("--mode", choices=("open", "closed"), default="open")
    run.add_argument("--rate", type=float, default=10.0, help="open loop: requests per second")
    run.add_argument("--concurrency", type=int, default=4, help="closed loop: clients")
    run.add_argument("--duration", type=float, default=30.0, help="seconds")

    rmp = sub.add_parser("ramp", help="open-loop steps of rising rate until the knee")
    _common(rmp)
    rmp.add_argument("--start", type=float, required=True)
    rmp.add_argument("--step", type=float, required=True)
    rmp.add_argument("--max", type=float, required=True, dest="max_rate")
    rmp.add_argument("--step-duration", type=float, default=10.0)
    rmp.add_argument("--p99-bound-ms", type=float, default=1000.0)
    rmp.add_argument("--follow-ratio", type=float, default=0.95)

    from loadtest import benchconfig, sweep

    benchconfig.add_arguments(sub.add_parser("bench", help="the full benchmark (make bench)"))
    benchconfig.add_bulk_arguments(sub.add_parser("bulk", help="bench phase (g) alone"))
    sweep.add_arguments(sub.add_parser("sweep", help="settings grid at saturation"))
    return parser


@contextlib.contextmanager
def payload_pool(args: argparse.Namespace) -> Iterator[PayloadPool]:
    """The prepared requests; for ``url`` payloads, a static server runs while they are used."""
    images = find_images(args.images, limit=args.limit_images)
    kind: PayloadKind = args.payload
    if kind != "url":
        yield PayloadPool.from_images(images, kind)
        return
    with StaticServer(images[0].parent) as server:
        print(
            f"serving {images[0].parent} at {server.url_base} (the service's "
            "CAPTION_URL_ALLOWLIST must allow 127.0.0.1)",
            file=sys.stderr,
        )
        yield PayloadPool.from_images(images, kind, url_base=server.url_base)


async def _run(args: argparse.Namespace) -> tuple[dict[str, Any], list[StepStats]]:
    """The results JSON of ``run`` or ``ramp``, and its steps."""
    target = generator.Target(args.url, timeout_s=args.timeout, scrape_metrics=not args.no_metrics)
    progress = not args.no_progress
    with payload_pool(args) as pool:
        async with generator.make_client(target, args.client, args.max_connections) as client:
            if args.command == "ramp":
                result = await generator.ramp(
                    client,
                    target,
                    pool,
                    start=args.start,
                    step=args.step,
                    max_rate=args.max_rate,
                    step_duration_s=args.step_duration,
                    p99_bound_ms=args.p99_bound_ms,
                    follow_ratio=args.follow_ratio,
                    arrivals=args.arrivals,
                    seed=args.seed,
                    progress=progress,
                )
                head = {"command": "ramp", "url": args.url, "payload": args.payload}
                return head | result.to_dict(), result.summaries
            if args.mode == "open":
                step = await generator.open_loop(
                    client,
                    target,
                    pool,
                    rate=args.rate,
                    duration_s=args.duration,
                    arrivals=args.arrivals,
                    seed=args.seed,
                    progress=progress,
                )
            else:
                step = await generator.closed_loop(
                    client,
                    target,
                    pool,
                    concurrency=args.concurrency,
                    duration_s=args.duration,
                    progress=progress,
                )
            stats = step.stats()
            head = {"command": "run", "url": args.url, "payload": args.payload}
            return head | {"steps": [dataclasses.asdict(stats)]}, [stats]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from loadtest import bench

        return bench.main(args)
    if args.command == "bulk":
        from loadtest import bulkbench

        return bulkbench.main(args)
    if args.command == "sweep":
        from loadtest import sweep

        return sweep.main(args)
    results, steps = asyncio.run(_run(args))
    out = report.write_json(args.out, results)
    plot = report.plot_steps(
        {args.payload: steps},
        args.plot or out.with_suffix(".png"),
        title=f"{args.command} against {args.url}",
    )
    if args.command == "run":
        print(generator.step_line(steps[0]))
    else:
        print(
            f"max sustained throughput {results['max_sustained_throughput']} /s "
            f"(knee at {results['knee_rate']}/s: {results['knee_reason']})"
        )
    print(f"results: {out}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
