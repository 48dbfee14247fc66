"""The report's section on (g), bulk captioning, and its ratio lines."""

from __future__ import annotations

import statistics

from loadtest.bulk import BulkResult, RayPart
from loadtest.bulkcli import CliRun
from loadtest.ratios import BulkRatios, verdict

RATIO_LINES = (
    ("g  in process (job) / offline (a)", "g_cli_over_a"),
    ("g    in process (wall) / offline (a)", "g_cli_wall_over_a"),
    ("g  --endpoint (job) / service ref.", "g_endpoint_over_b"),
    ("g    --endpoint (job) / closed loop", "g_endpoint_over_closed_loop"),
    ("g  rerun wall / first run wall", "g_rerun_share"),
    ("g  Ray / in process (wall)", "g_ray_over_cli"),
    ("g    Ray past fixed cost / in process", "g_ray_steady_over_cli"),
)


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio_lines(r: BulkRatios) -> str:
    return "\n".join(
        f"{label:<38} {_f(getattr(r, key), 3):>9}  {verdict(key, getattr(r, key))}".rstrip()
        for label, key in RATIO_LINES
    )


def _run(run: CliRun) -> str:
    return f"{run.job_rate:.1f} / {run.wall_rate:.1f} ({run.wall_s:.1f} s)"


def lines(bulk: BulkResult, ratios: BulkRatios) -> list[str]:
    proc, end, rerun = bulk.in_process, bulk.endpoint, bulk.rerun
    concurrencies = list(end.job_rate_medians)
    out = [
        f"## Bulk captioning (g): `captioner caption` over {bulk.images} images",
        "",
        "Each run is one `captioner caption LIST --out FRESH --beam-size 1 --quiet` subprocess "
        "(greedy, as in (a) and (b)); its rate is given two ways: *job* = its own summary "
        "(images / the job's seconds, which start once the model is loaded and warm or the "
        "service answered): the steady-state rate, the fair comparison with (a); *wall* = "
        "images / the whole command's wall time, interpreter, imports and model load included. "
        f"Service reference: {ratios.service_reference:.1f}/s, "
        f"{ratios.service_reference_source}. Phase (g) took {bulk.wall_s:.0f} s.",
        "",
        "```",
        ratio_lines(ratios),
        "```",
        "",
        f"In process, in turns with the offline pipeline at (a)'s best configuration "
        f"({proc.configuration}) on the same images; medians: offline "
        f"{proc.offline_median:.1f} img/s, the command {proc.job_rate_median:.1f} (job) and "
        f"{proc.wall_rate_median:.1f} (wall) img/s, {proc.startup_median_s:.1f} s of each run "
        "outside the job.",
        "",
        "| round | offline img/s | command img/s: job / wall (wall s) |",
        "|---|---|---|",
        *(f"| {i} | {r.offline:.1f} | {_run(r.cli)} |" for i, r in enumerate(proc.rounds, start=1)),
        "",
        f"`--endpoint` against `python -m service` (`CAPTION_CACHE_SIZE=0`), in turns with the "
        f"load generator's closed loop ({end.closed_loop_concurrency} clients, uploads, "
        f"{end.closed_loop_s:g} s); best `--concurrency {end.best_concurrency}`.",
        "",
        "| round | closed loop /s | "
        + " | ".join(f"c={c}: job / wall (wall s)" for c in concurrencies)
        + " |",
        "|---|---|" + "---|" * len(concurrencies),
        *(
            f"| {i} | {r.closed_loop:.1f} | "
            + " | ".join(_run(r.runs[c]) for c in concurrencies)
            + " |"
            for i, r in enumerate(end.rounds, start=1)
        ),
        "",
        _cpu_line(bulk),
        "",
        f"Rerun over the finished output (every input skipped): {rerun.rerun.wall_s:.2f} s "
        f"wall against {rerun.first.wall_s:.2f} s for the run that wrote it "
        f"({rerun.share:.1%}); its job took {rerun.rerun.job_s:.2f} s, the rest is start-up "
        "(interpreter, imports, model load and warm-up)." + _endpoint_rerun(bulk),
        "",
    ]
    return out + (_ray_lines(bulk.ray) if bulk.ray is not None else [])


def _cpu_line(bulk: BulkResult) -> str:
    """Where the cores went with ``--endpoint``: client and service CPU per image, medians."""
    end = bulk.endpoint
    best = str(end.best_concurrency)
    client = statistics.median(r.runs[best].cpu_ms_per_image for r in end.rounds)
    generator = statistics.median(r.closed_loop_client_cpu_ms for r in end.rounds)
    service = statistics.median(r.service_cpu_ms[best] for r in end.rounds)
    closed = statistics.median(r.service_cpu_ms["closed"] for r in end.rounds)
    return (
        f"CPU per image on the shared cores (medians): the command {client:.1f} ms and the "
        f"service {service:.1f} ms at `--concurrency {best}`; the load generator {generator:.1f} "
        f"ms and the service {closed:.1f} ms in the closed loop."
    )


def _endpoint_rerun(bulk: BulkResult) -> str:
    first, again = bulk.rerun.endpoint_first, bulk.rerun.endpoint_rerun
    if first is None or again is None:
        return ""
    return (
        f" With `--endpoint` (no model to load): {again.wall_s:.2f} s against "
        f"{first.wall_s:.2f} s ({again.wall_s / first.wall_s:.1%})."
    )


def _shard(run: CliRun) -> str:
    return f"{run.wall_s:.1f} ({_f(run.first_output_s)})"


def _ray_lines(ray: RayPart) -> list[str]:
    sizes = list(ray.wall_rate_medians)
    per_batch = (
        f"; each extra batch costs {ray.per_batch_s:.3f} s (batch {sizes[0]} against "
        f"{sizes[-1]}, medians)"
        if ray.per_batch_s is not None
        else ""
    )
    first = ray.fixed_first_output_s
    return [
        f"Ray Data: `--engine ray --actors {ray.actors} --cpus-per-actor {ray.cpus_per_actor}` "
        "into a fresh folder each run, in turns with the in-process command. Medians: in "
        f"process {ray.cli_wall_rate_median:.1f} img/s (wall), Ray "
        + ", ".join(f"batch {b} {r:.1f}" for b, r in ray.wall_rate_medians.items())
        + " img/s (wall). A Ray job over 2 images (its fixed cost: imports, model check, "
        f"`ray.init`, actors loading the model, write, exit) takes {ray.fixed_s:.1f} s"
        + (f", its first shard written at {first:.1f} s" if first is not None else "")
        + f" (medians); past it, Ray captions {ray.steady_rate:.1f} img/s at batch "
        f"{ray.best_batch_size}{per_batch}.",
        "",
        "| round | in process wall s | Ray over 2 images: wall s (first shard s) | "
        + " | ".join(f"Ray batch {b}: wall s (first shard s)" for b in sizes)
        + " |",
        "|---|---|---|" + "---|" * len(sizes),
        *(
            f"| {i} | {r.cli.wall_s:.1f} | {_shard(r.fixed)} | "
            + " | ".join(_shard(r.runs[b]) for b in sizes)
            + " |"
            for i, r in enumerate(ray.rounds, start=1)
        ),
        "",
    ]
