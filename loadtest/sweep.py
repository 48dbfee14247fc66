"""``python -m loadtest sweep``: service settings against saturation throughput, to tune defaults.

    python -m loadtest sweep --bundle models/default \\
        --set CAPTION_MAX_BATCH_SIZE=4,8,16,32 --set CAPTION_MAX_CONCURRENT_BATCHES=1,2

For every combination of the ``--set`` values a fresh ``python -m service`` is started and held
at saturation by a closed loop (``--concurrency`` clients, enough to keep full batches queued)
for ``--duration`` seconds, then at a light open-loop rate (``--light-rate``) for the latency a
lone request sees. One row per combination: throughput, p50/p99 under saturation, mean batch,
light-load p50. A closed loop is the right tool here: it asks "how fast can it go", not "what
latency do users see at a rate" (that is ``ramp``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from dataclasses import asdict
from pathlib import Path

from loadtest import generator, report
from loadtest.payloads import PayloadPool, find_images
from loadtest.service_proc import ServiceProcess
from loadtest.stats import StepStats

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXED = ("CAPTION_LOG_LEVEL", "CAPTION_CACHE_SIZE")
"""Set for every combination: no access log under load; no response cache (the load cycles a
few images, and each must reach the model)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    p.add_argument("--images", type=Path, default=None)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CAPTION_X=V1,V2",
        help="a setting and the values to try (repeatable; the grid is their product)",
    )
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--light-rate", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=Path("runs/loadtest/sweep.json"))


def grid(sets: list[str]) -> list[dict[str, str]]:
    axes: list[list[tuple[str, str]]] = []
    for item in sets:
        key, _, values = item.partition("=")
        if not key.startswith("CAPTION_") or not values:
            raise SystemExit(f"--set wants CAPTION_X=V1,V2; got {item!r}")
        axes.append([(key, v.strip()) for v in values.split(",") if v.strip()])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


async def _measure(
    svc: ServiceProcess, pool: PayloadPool, args: argparse.Namespace
) -> tuple[StepStats, StepStats]:
    """The saturated closed loop's stats and the light open loop's."""
    target = generator.Target(svc.base_url, timeout_s=60)
    async with generator.make_client(target) as client:
        await generator.closed_loop(
            client, target, pool, concurrency=4, duration_s=2, progress=False
        )
        busy = (
            await generator.closed_loop(
                client,
                target,
                pool,
                concurrency=args.concurrency,
                duration_s=args.duration,
                progress=False,
            )
        ).stats()
        light = (
            await generator.open_loop(
                client, target, pool, rate=args.light_rate, duration_s=5, progress=False
            )
        ).stats()
    return busy, light


def main(args: argparse.Namespace) -> int:
    pool = PayloadPool.from_images(find_images(args.images, limit=128), "upload")
    rows = []
    for env in grid(args.set):
        env = {"CAPTION_LOG_LEVEL": "warning", "CAPTION_CACHE_SIZE": "0", **env}
        with ServiceProcess(args.bundle, env=env) as svc:
            busy, light = asyncio.run(_measure(svc, pool, args))
        row = {
            "settings": {k: v for k, v in env.items() if k not in FIXED},
            "throughput": busy.throughput,
            "p50_ms": busy.latency_ms.get("p50"),
            "p99_ms": busy.latency_ms.get("p99"),
            "mean_batch": busy.server.batch_size_mean if busy.server else None,
            "errors": busy.errors,
            "light_p50_ms": light.latency_ms.get("p50"),
            "raw": {"saturated": asdict(busy), "light": asdict(light)},
        }
        rows.append(row)
        print(
            f"{row['settings']}: {row['throughput']:.1f}/s, p50 {row['p50_ms']:.0f} ms, "
            f"p99 {row['p99_ms']:.0f} ms, mean batch {row['mean_batch'] or 0:.1f}, "
            f"light-load p50 {row['light_p50_ms']:.0f} ms",
            flush=True,
        )
    report.write_json(args.out, {"bundle": str(args.bundle), "rows": rows})
    print(f"results: {args.out}")
    return 0
