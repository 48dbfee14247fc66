"""Bench phase (g): ``captioner caption`` over the same images as its references, in one sitting.

Every run is a subprocess (``loadtest.bulkcli``), greedy (``--beam-size 1``), on a fresh output:

1. in process (``--out X.jsonl``), in turns with the offline pipeline at (a)'s best configuration
   on the same images (``loadtest.ceiling.offline_rerun``);
2. the last of those commands again over its finished output (every input skipped);
3. ``--endpoint`` against a ``python -m service`` subprocess with the bench's service settings
   (no response cache): each round, the load generator's saturated closed loop, then the command
   at each ``--concurrency``; then a rerun of the best one;
4. ``--engine ray`` (``--actors``, one CPU each), each round after an in-process command, at each
   ``--batch-size``, into a fresh folder (Ray skips what an earlier run there answered); a run
   over two images first: the fixed cost of a Ray job.

Medians over the rounds; the ratios and their targets are ``loadtest.ratios.bulk_ratios``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import generator
from loadtest.benchconfig import BenchConfig
from loadtest.bulkcli import CliRun, run_caption, write_list
from loadtest.ceiling import OfflineRow, offline_rerun
from loadtest.payloads import PayloadPool
from loadtest.profiling import ThreadTime, schedstat, since
from loadtest.service_proc import ServiceProcess
from loadtest.service_run import BENCH_ENV

GREEDY = ["--beam-size", "1"]
RAY_FIXED_IMAGES = 2
"""Images of the Ray run that measures the fixed cost: one per actor."""


@dataclass(frozen=True)
class CeilingRound:
    offline: float
    """(a) at its best configuration on these images, images/s, right before ``cli``."""
    cli: CliRun


@dataclass(frozen=True)
class InProcess:
    configuration: str
    """(a)'s best configuration, which the offline runs use."""
    rounds: list[CeilingRound]
    offline_median: float
    job_rate_median: float
    """The command's steady-state images/s (its summary), median."""
    wall_rate_median: float
    """Images / wall time of the whole command (model load included), median."""
    startup_median_s: float
    """Wall time outside the job (interpreter, imports, model load and warm-up), median."""


@dataclass(frozen=True)
class Rerun:
    first: CliRun
    rerun: CliRun
    """The same command over ``first``'s finished output."""
    share: float
    """``rerun.wall_s / first.wall_s``."""
    endpoint_first: CliRun | None = None
    endpoint_rerun: CliRun | None = None
    """The same with ``--endpoint``: a rerun that loads no model."""


@dataclass(frozen=True)
class EndpointRound:
    closed_loop: float
    """The load generator's closed loop (upload payloads) just before, captions/s."""
    runs: dict[str, CliRun]
    """By ``--concurrency``."""
    closed_loop_client_cpu_ms: float
    """CPU the load generator spent per answer (the command's own: ``CliRun.cpu_ms_per_image``)."""
    service_cpu_ms: dict[str, float]
    """CPU the service spent per image: ``"closed"`` for the closed loop, else by
    ``--concurrency``."""


@dataclass(frozen=True)
class Endpoint:
    env: dict[str, str]
    """The service's settings."""
    closed_loop_concurrency: int
    closed_loop_s: float
    rounds: list[EndpointRound]
    closed_loop_median: float
    job_rate_medians: dict[str, float]
    """The command's images/s (its summary) by ``--concurrency``, median."""
    best_concurrency: int


@dataclass(frozen=True)
class RayRound:
    cli: CliRun
    """The in-process command, right before."""
    fixed: CliRun
    """Ray over ``RAY_FIXED_IMAGES`` images: what a Ray job costs before its first batch and
    after its last (imports, model check, ``ray.init``, actors loading the model, write, exit)."""
    runs: dict[str, CliRun]
    """By ``--batch-size``."""


@dataclass(frozen=True)
class RayPart:
    actors: str
    cpus_per_actor: int
    rounds: list[RayRound]
    cli_wall_rate_median: float
    cli_job_rate_median: float
    fixed_s: float
    """Wall time of the Ray runs over ``RAY_FIXED_IMAGES`` images, median."""
    fixed_first_output_s: float | None
    """When their first shard appeared, median."""
    wall_rate_medians: dict[str, float]
    """Images / wall time by ``--batch-size``, median."""
    best_batch_size: int
    steady_rate: float
    """Images/s past the fixed cost at the best batch size: (N - 2) / (wall - fixed), medians."""
    per_batch_s: float | None
    """Wall time per extra batch: the smallest against the largest batch size; ``None`` with
    one size."""


@dataclass(frozen=True)
class BulkResult:
    images: int
    in_process: InProcess
    rerun: Rerun
    endpoint: Endpoint
    ray: RayPart | None
    """``None``: not run (``--no-ray``)."""
    wall_s: float


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _layout(best: OfflineRow) -> str:
    threads = "1 pipeline on all cores" if best.workers == 1 else f"{best.workers} x 1 thread"
    return f"batch {best.batch_size}, {threads}"


def _local(cfg: BenchConfig, listing: Path, out: Path) -> list[str]:
    return [str(listing), "--out", str(out), "--bundle-dir", str(cfg.bundle_dir), *GREEDY]


def _in_process(
    cfg: BenchConfig, listing: Path, work: Path, blobs: list[bytes], best: OfflineRow
) -> tuple[InProcess, list[str]]:
    """Part 1; also the last command's arguments (part 2 reruns it)."""
    offline = offline_rerun(cfg.bundle_dir, blobs, best)
    rounds: list[CeilingRound] = []
    args: list[str] = []
    for i in range(cfg.bulk_rounds):
        a = offline()
        args = _local(cfg, listing, work / f"local-{i}.jsonl")
        cli = run_caption(f"in process {i + 1}", args)
        rounds.append(CeilingRound(a, cli))
        print(
            f"  round {i + 1}: offline {a:.1f} img/s; captioner caption {cli.job_rate:.1f} img/s "
            f"in its job, {cli.wall_rate:.1f} img/s over {cli.wall_s:.1f} s wall",
            flush=True,
        )
    del offline
    gc.collect()
    clis = [r.cli for r in rounds]
    return InProcess(
        configuration=_layout(best),
        rounds=rounds,
        offline_median=_median([r.offline for r in rounds]),
        job_rate_median=_median([c.job_rate for c in clis]),
        wall_rate_median=_median([c.wall_rate for c in clis]),
        startup_median_s=_median([c.startup_s for c in clis]),
    ), args


async def _closed_loop(
    url: str, pool: PayloadPool, concurrency: int, seconds: float
) -> tuple[float, int, float]:
    """Answers/s in the steady window, answers, and the generator's CPU seconds."""
    target = generator.Target(url, timeout_s=60.0, scrape_metrics=False)
    cpu = time.process_time()
    async with generator.make_client(target) as client:
        step = await generator.closed_loop(
            client, target, pool, concurrency=concurrency, duration_s=seconds, progress=False
        )
    stats = step.stats()
    return stats.throughput, stats.ok, time.process_time() - cpu


def _per_image_ms(before: ThreadTime, pid: int, images: int) -> float:
    return 1000.0 * since(before, schedstat(pid)).cpu_s / images if images else 0.0


def _endpoint(
    cfg: BenchConfig, listing: Path, work: Path, paths: list[Path]
) -> tuple[Endpoint, CliRun, CliRun]:
    """Part 3; and the best concurrency's last run with its rerun."""
    env = {**BENCH_ENV, **cfg.service_env}
    pool = PayloadPool.from_images(paths, "upload")
    rounds: list[EndpointRound] = []
    with ServiceProcess(cfg.bundle_dir, env=env) as svc:

        def command(concurrency: int, out: Path) -> list[str]:
            return [str(listing), "--out", str(out), "--endpoint", svc.base_url,
                    "--concurrency", str(concurrency), *GREEDY]  # fmt: skip

        asyncio.run(_closed_loop(svc.base_url, pool, 2, 1.0))  # warm connections, code paths
        pid = svc.pid
        assert pid is not None
        for i in range(cfg.bulk_rounds):
            before = schedstat(pid)
            closed, answers, client_cpu = asyncio.run(
                _closed_loop(svc.base_url, pool, cfg.bulk_closed_concurrency, cfg.step_s)
            )
            service_cpu = {"closed": _per_image_ms(before, pid, answers)}
            runs: dict[str, CliRun] = {}
            for c in cfg.bulk_concurrencies:
                before = schedstat(pid)
                out = work / f"endpoint-{c}-{i}.jsonl"
                runs[str(c)] = run_caption(f"endpoint c={c} {i + 1}", command(c, out))
                service_cpu[str(c)] = _per_image_ms(before, pid, runs[str(c)].done)
            client_ms = 1000.0 * client_cpu / answers if answers else 0.0
            rounds.append(EndpointRound(closed, runs, client_ms, service_cpu))
            shown = ", ".join(f"c={c} {r.job_rate:.1f}" for c, r in runs.items())
            print(f"  round {i + 1}: closed loop {closed:.1f}/s; --endpoint {shown} img/s")
        medians = {
            str(c): _median([r.runs[str(c)].job_rate for r in rounds])
            for c in cfg.bulk_concurrencies
        }
        best = max(cfg.bulk_concurrencies, key=lambda c: medians[str(c)])
        last = work / f"endpoint-{best}-{cfg.bulk_rounds - 1}.jsonl"
        again = run_caption(f"endpoint c={best} rerun", command(best, last))
    endpoint = Endpoint(
        env=env,
        closed_loop_concurrency=cfg.bulk_closed_concurrency,
        closed_loop_s=cfg.step_s,
        rounds=rounds,
        closed_loop_median=_median([r.closed_loop for r in rounds]),
        job_rate_medians=medians,
        best_concurrency=best,
    )
    return endpoint, rounds[-1].runs[str(best)], again


def _ray(cfg: BenchConfig, listing: Path, work: Path, images: int) -> RayPart:
    """Part 4."""

    def ray(label: str, source: Path, batch_size: int, out: Path) -> CliRun:
        args = [str(source), "--out", str(out), "--bundle-dir", str(cfg.bundle_dir), *GREEDY,
                "--engine", "ray", "--actors", cfg.bulk_ray_actors, "--cpus-per-actor", "1",
                "--batch-size", str(batch_size)]  # fmt: skip
        return run_caption(label, args, watch=out)

    head = listing.read_text().splitlines(keepends=True)[:RAY_FIXED_IMAGES]
    few = work / "few.txt"
    few.write_text("".join(head))
    rounds: list[RayRound] = []
    for i in range(cfg.bulk_ray_rounds):
        cli = run_caption(f"in process, Ray round {i + 1}",
                          _local(cfg, listing, work / f"ray-local-{i}.jsonl"))  # fmt: skip
        fixed = ray(f"ray fixed cost {i + 1}", few, 64, work / f"ray-fixed-{i}")
        runs = {
            str(b): ray(f"ray batch {b} {i + 1}", listing, b, work / f"ray-{b}-{i}")
            for b in cfg.bulk_ray_batch_sizes
        }
        rounds.append(RayRound(cli, fixed, runs))
        shown = ", ".join(f"batch {b} {r.wall_s:.1f} s" for b, r in runs.items())
        print(
            f"  round {i + 1}: in process {cli.wall_s:.1f} s wall; Ray over "
            f"{RAY_FIXED_IMAGES} images {fixed.wall_s:.1f} s, {shown}",
            flush=True,
        )
    walls = {
        str(b): _median([r.runs[str(b)].wall_rate for r in rounds])
        for b in cfg.bulk_ray_batch_sizes
    }
    best = max(cfg.bulk_ray_batch_sizes, key=lambda b: walls[str(b)])

    def wall_s(batch_size: int) -> float:
        return _median([r.runs[str(batch_size)].wall_s for r in rounds])

    sizes = sorted(cfg.bulk_ray_batch_sizes)
    per_batch = None
    if len(sizes) > 1:
        extra = math.ceil(images / sizes[0]) - math.ceil(images / sizes[-1])
        per_batch = (wall_s(sizes[0]) - wall_s(sizes[-1])) / extra if extra else None
    fixed_s = _median([r.fixed.wall_s for r in rounds])
    firsts = [r.fixed.first_output_s for r in rounds if r.fixed.first_output_s is not None]
    past_fixed = wall_s(best) - fixed_s
    return RayPart(
        actors=cfg.bulk_ray_actors,
        cpus_per_actor=1,
        rounds=rounds,
        cli_wall_rate_median=_median([r.cli.wall_rate for r in rounds]),
        cli_job_rate_median=_median([r.cli.job_rate for r in rounds]),
        fixed_s=fixed_s,
        fixed_first_output_s=_median(firsts) if firsts else None,
        wall_rate_medians=walls,
        best_batch_size=best,
        steady_rate=(images - RAY_FIXED_IMAGES) / past_fixed if past_fixed > 0 else 0.0,
        per_batch_s=per_batch,
    )


def bulk_phase(cfg: BenchConfig, paths: list[Path], best: OfflineRow) -> BulkResult:
    """(g) over ``paths`` (``cfg.bulk_images`` of them), the offline runs at ``best``."""
    started = time.perf_counter()
    used = paths[: cfg.bulk_images]
    work = Path(tempfile.mkdtemp(prefix="captioner-bulk-"))
    try:
        listing = write_list(used, work / "images.txt")
        print(f"  {len(used)} images; offline at (a)'s best: {_layout(best)}", flush=True)
        in_process, last_args = _in_process(
            cfg, listing, work, [p.read_bytes() for p in used], best
        )
        rerun = run_caption("in process rerun", last_args)
        first = in_process.rounds[-1].cli
        print(f"  rerun over the finished output: {rerun.wall_s:.2f} s wall", flush=True)
        endpoint, endpoint_first, endpoint_rerun = _endpoint(cfg, listing, work, used)
        ray = _ray(cfg, listing, work, len(used)) if cfg.bulk_ray else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BulkResult(
        images=len(used),
        in_process=in_process,
        rerun=Rerun(
            first=first,
            rerun=rerun,
            share=rerun.wall_s / first.wall_s,
            endpoint_first=endpoint_first,
            endpoint_rerun=endpoint_rerun,
        ),
        endpoint=endpoint,
        ray=ray,
        wall_s=time.perf_counter() - started,
    )
