"""``docs/benchmarks.md`` from a ``BenchResults``, and the ratio lines the bench prints."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from loadtest import bulkdoc
from loadtest.ceiling import OfflineResult, OfflineRow
from loadtest.host import Priority
from loadtest.profiling import Profile
from loadtest.ratios import TARGETS, P99Floor, Ratios, verdict
from loadtest.results import BenchResults
from loadtest.service_run import LEVELS, ServiceRun, level_key
from loadtest.stats import StepStats

RATIO_LINES = (
    ("b/a  service / offline ceiling", "b_over_a"),
    ("b/c  batching / max_batch_size=1", "b_over_c"),
    ("b/d  service / naive baseline", "b_over_d"),
    ("e    int8 / fp32 (end to end)", "e_int8_over_fp32"),
    ("e    int8 / fp32 (encoder only)", "e_int8_over_fp32_encoder"),
    ("f    encoder fraction of fp32 peak", "f_encoder_fraction_of_peak"),
    ("p99 at 80% / idle p50", "p99_at_80_over_idle"),
    ("  floor from (a): ideal batcher model", "p99_at_80_over_idle_floor"),
    ("2x load: 503 answered in (p99 ms)", "overload_503_p99_ms"),
    ("2x load: slowest accepted (ms)", "overload_accepted_max_ms"),
)
SETTINGS_SHOWN = (
    "max_batch_size", "max_wait_ms", "queue_size", "max_concurrent_batches", "intra_op_threads",
    "decode_threads", "use_int8", "request_timeout_s", "cache_size",
)  # fmt: skip
LEVEL_HEAD = (
    "| load | offered /s | ok /s | p50 ms | p99 ms | 503 share | 503 p99 ms | "
    "mean batch | queue wait p99 ms |"
)


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(key: str) -> str:
    return f"{float(key):.0%}"


def ratio_lines(r: Ratios) -> str:
    lines = [f"{label:<38} {_f(getattr(r, key), 3):>9}  {verdict(key, getattr(r, key))}"
             for label, key in RATIO_LINES]  # fmt: skip
    floor = r.p99_at_80_over_idle_floor
    if floor is not None:
        at = next(i for i, (_, key) in enumerate(RATIO_LINES) if key == "p99_at_80_over_idle_floor")
        bound = TARGETS["p99_at_80_over_idle"][1]
        lines[at] += (
            f"  > {bound:g}: out of reach by batching here"
            if floor > bound
            else f"  <= {bound:g}: in reach in this model"
        )
    ok = r.overload_accepted_within_deadline
    lines[-1] += f"  {'met' if ok else 'MISSED'} (deadline {r.deadline_ms:.0f} ms)"
    return "\n".join(lines)


def _layout(row: OfflineRow) -> str:
    """How the offline row ran: one pipeline on every core, or N single-threaded side by side."""
    return "1 pipeline on all cores" if row.workers == 1 else f"{row.workers} pipelines x 1 thread"


def _servers(floor: P99Floor) -> str:
    n = floor.ideal.servers
    return "one batch at a time" if n == 1 else f"{n} batches side by side"


HISTORY = "\n## History"


def write(path: Path, results: BenchResults) -> Path:
    """Write the report; an existing file's History section (hand-kept) is carried over."""
    history = ""
    if path.exists():
        old = path.read_text()
        start = old.find(HISTORY)
        history = old[start:] if start >= 0 else ""
    path.write_text("\n".join(lines(results)) + "\n" + history)
    return path


QUICK_NOTE = "**QUICK MODE: a smoke run with very short steps; these are not measurements.**"


def lines(results: BenchResults) -> list[str]:
    out = ["# Benchmarks", "", "Written by `make bench` (`python -m loadtest bench`); "
           "do not edit by hand, except the History section at the end, which is kept.",
           ""]  # fmt: skip
    if results.config.quick:
        out += [QUICK_NOTE, ""]
    return [
        *out,
        *_header_lines(results),
        *_summary_lines(results),
        *_paired_lines(results),
        "## Ratios and targets",
        "",
        "```",
        ratio_lines(results.ratios),
        "```",
        "",
        *_floor_lines(results),
        *_offline_lines(results),
        *_roofline_lines(results),
        *_service_lines(results),
        *_settings_lines(results.service),
        *_batch_lines(results.service),
        *_cpu_lines(results),
        *_profile_lines(results.service),
        *_bulk_lines(results),
    ]


def _bulk_lines(results: BenchResults) -> list[str]:
    bulk, ratios = results.bulk, results.ratios.bulk
    return bulkdoc.lines(bulk, ratios) if bulk is not None and ratios is not None else []


def _header_lines(results: BenchResults) -> list[str]:
    m, bundle, images = results.machine, results.bundle, results.images
    finished = datetime.fromisoformat(results.finished_utc) if results.finished_utc else None
    when = finished or datetime.now(UTC)
    return [
        f"- Date: {when:%Y-%m-%d %H:%M} UTC; whole run {results.wall_s:.0f} s.",
        f"- Command: `make bench` (= `python -m loadtest bench --bundle {bundle.dir}`).",
        f"- Machine: {m.model_name or '?'}, {m.cpus or '?'} CPUs ({m.cores_usable} usable), "
        f"{_f(m.memory_gib) if m.memory_gib is not None else '?'} GiB, "
        f"{m.hypervisor or 'bare metal'} VM; Python {m.python}, "
        f"ONNX Runtime {m.onnxruntime or '?'}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in m.load_average_at_start)}.",
        f"- Bundle: `{bundle.name}` {bundle.version} (encoder {bundle.encoder}, decoder "
        f"{bundle.decoder}).",
        f"- Images: {images.folder} ({images.available} available; {images.used} used offline "
        "and by the load generator).",
        f"- The load generator runs on the same {m.cores_usable} cores as the service: every "
        "HTTP figure pays "
        "for the client's CPU too.",
        _priority_line(results.priority),
        "",
    ]


def _median_note(service: ServiceRun) -> str:
    paired = service.paired
    return f"; median of {len(paired.rounds)} paired runs" if paired else ""


def _summary_lines(results: BenchResults) -> list[str]:
    r, off, naive = results.ratios, results.offline, results.naive
    svc, svc1 = results.service.level(1.0), results.service_batch1.level(1.0)
    note = _median_note(results.service)
    lines = [
        "## Summary",
        "",
        "| | configuration | captions/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| a | offline in-process pipeline, best batch {off.best.batch_size}, "
        f"{_layout(off.best)} (ceiling{note}) | {_f(r.a)} | | |",
        f"| b | service over HTTP, batching (max sustained{note}) | {_f(r.b)} | "
        f"{_f(svc.latency_ms.get('p50'))} | {_f(svc.latency_ms.get('p99'))} |",
        f"| c | service, `CAPTION_MAX_BATCH_SIZE=1` (max sustained) | {_f(r.c)} | "
        f"{_f(svc1.latency_ms.get('p50'))} | {_f(svc1.latency_ms.get('p99'))} |",
    ]
    if naive.skipped is None:
        lines.append(
            f"| d | naive baseline ({naive.label}; {naive.images} images, 1 / mean latency) | "
            f"{_f(r.d, 3)} | {_f(1000 * naive.mean_s, 0)} (mean) | |"
        )
    else:
        lines.append(f"| d | naive baseline: skipped ({naive.skipped}) | n/a | | |")
    i8 = results.offline_int8
    if i8 is not None:
        lines.append(
            f"| e | offline pipeline, int8 encoder, best batch {i8.best.batch_size}, "
            f"{_layout(i8.best)} | {_f(i8.best.throughput)} | | |"
        )
    lines.append("")
    if naive.skipped is None:
        service_min = f"{1000 / r.b / 60:.1f}" if r.b else "n/a"
        lines += [
            f"The naive baseline's greedy captions equal the ONNX model's on "
            f"{naive.captions_match} of {naive.images} images (same weights). It took "
            f"{naive.mean_s:.2f} s per image; at that pace the 1,000 test images take "
            f"{1000 * naive.mean_s / 60:.0f} min, against {service_min} min through the "
            "batching service.",
            "",
        ]
    return [
        *lines,
        "p50/p99 for b and c are at 100% of their max sustained rate (Poisson arrivals), "
        "measured from each request's scheduled send time.",
        "",
    ]


def _paired_lines(results: BenchResults) -> list[str]:
    """The turns of (a) and (b) that b/a is taken from."""
    paired = results.service.paired
    if paired is None:
        return []
    r = results.ratios
    rows = [
        f"| {i} | {x.offline:.1f} | {x.service:.1f} | {_f(x.p50_ms)} | {_f(x.p99_ms)} | "
        f"{x.service / x.offline:.3f} |"
        for i, x in enumerate(paired.rounds, start=1)
    ]
    return [
        "### Paired runs: where a and b come from",
        "",
        f"After (b)'s ramp, in turns: the offline pipeline at (a)'s best configuration, then the "
        f"service at its max sustained rate ({paired.rate:.1f}/s offered, Poisson, "
        f"{results.config.level_s:g} s). a and b are the medians (the service's p50/p99 in "
        "the summary and at 100% below are from its median run). Noise on this shared machine "
        "hits both alike this way; (a)'s sweep keeps each batch size's best round, and the "
        f"ramp's best step is a single run: they gave a = {_f(r.a_sweep)} and b = "
        f"{_f(r.b_ramp)} (throughput counts the answers in each step's steady window; "
        "see `loadtest.stats`).",
        "",
        "| run | offline img/s | service captions/s | service p50 ms | service p99 ms | ratio |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _floor_lines(results: BenchResults) -> list[str]:
    """What bounds p99 at 80%: the floor's model and numbers, and where the measured p99 went."""
    floor = results.ratios.p99_at_80_floor
    if floor is None:
        return []
    ideal = floor.ideal
    level = results.service.level(0.8)
    srv = level.server
    batch_ms = sum(srv.mean_ms_per_batch.get(stage, 0.0) for stage in ("encode", "decode")) \
        if srv else 0.0  # fmt: skip
    measured = (
        f"Measured at 80%: p99 {_f(level.latency_ms.get('p99'))} ms from the scheduled send; "
        f"in the service, queue wait p99 {_f(srv.queue_wait_p99_ms if srv else None)} ms, mean "
        f"batch {_f(srv.batch_size_mean if srv else None, 2)} taking {batch_ms:.1f} ms "
        "(encode + decode mean)."
    )
    return [
        "### What bounds p99 at 80% (floor from (a))",
        "",
        f"An ideal batching server (`loadtest.queue_model`) gets Poisson arrivals at 80% of (b), "
        f"{floor.rate:.1f}/s. It runs one batch at a time on the whole CPU, or single-threaded "
        "batches side by side, each taking the offline pipeline's measured time for its size in "
        "that layout (a), and starts on everything waiting the moment a model is free; nothing "
        "else takes CPU and no hand-off costs anything. Over every batch cap and both layouts, "
        f"the kindest ({_servers(floor)}, cap {ideal.max_batch}, mean batch "
        f"{ideal.batch_size_mean:.2f}, model busy {100 * ideal.busy_fraction:.0f}% of the "
        f"time) gives p50 {ideal.p50_ms:.1f} ms and p99 {ideal.p99_ms:.1f} ms. Adding what "
        "an idle request pays outside the model (idle p50 - offline T(1) = "
        f"{floor.outside_model_ms:.1f} ms: HTTP, upload, hand-offs), the floor is p99 >= "
        f"{floor.p99_floor_ms:.1f} ms = {floor.ratio:.2f} x idle p50 (target <= "
        f"{TARGETS['p99_at_80_over_idle'][1]:g}). The wait comes from the Poisson bursts: at 80% "
        "load the backlog a burst leaves takes several batch times to clear. A real service also "
        "shares the cores with image decoding, HTTP and, here, the load generator, so its p99 "
        "can only be higher.",
        "",
        measured,
        "",
    ]


def _offline_rows(block: OfflineResult) -> list[str]:
    side = {row.batch_size: row for row in block.parallel_rows}
    rows = []
    for row in block.rows:
        other = side.get(row.batch_size)
        parallel = f"{other.throughput:.1f} ({other.workers} x)" if other else ""
        rows.append(
            f"| {'int8' if block.int8 else 'fp32'} | {row.batch_size} | {row.throughput:.1f} | "
            f"{parallel} | {_f(row.encoder_throughput)} |"
        )
    return rows


def _offline_lines(results: BenchResults) -> list[str]:
    blocks = [results.offline, *([results.offline_int8] if results.offline_int8 else [])]
    captions = "; ".join(repr(c) for c in results.offline.sample_captions)
    return [
        "## Offline pipeline by batch size (a, e)",
        "",
        "| encoder | batch | end to end img/s, 1 pipeline on all cores | end to end img/s, "
        "pipelines side by side, 1 thread each | encoder only img/s |",
        "|---|---|---|---|---|",
        *(row for block in blocks for row in _offline_rows(block)),
        "",
        f"Sample captions: {captions}.",
        "",
    ]


def _roofline_lines(results: BenchResults) -> list[str]:
    roof = results.roofline
    return [
        "## Roofline (f)",
        "",
        f"- Encoder: {roof.encoder_gflops_per_image:.3f} GFLOP per image (2 x MACs of "
        f"Conv/MatMul/Gemm, counted with ONNX shape inference at batch 1; "
        f"{roof.encoder_macs_by_op}); decoder {roof.decoder_mflops_per_step:.2f} MFLOP per step.",
        f"- Peak: {roof.peak_gflops:.1f} GFLOP/s, the better of a large float32 matmul "
        f"in ONNX Runtime ({roof.peak_gflops_onnxruntime:.1f}, its MLAS kernels) and "
        f"in NumPy ({roof.peak_gflops_numpy:.1f}, best of 2 x 10 runs); NumPy's BLAS "
        "may not use this CPU's widest vector units.",
        f"- Encoder alone at its best batch: {roof.encoder_achieved_gflops:.1f} GFLOP/s = "
        f"{roof.encoder_fraction_of_peak:.1%} of peak; the whole offline pipeline's images/s "
        f"puts the encoder at {roof.pipeline_encoder_fraction_of_peak:.1%}.",
        "",
    ]


def _level_row(key: str, s: StepStats) -> str:
    srv = s.server
    return (
        f"| {_pct(key)} | {_f(s.offered_rate)} | {s.throughput:.1f} | "
        f"{_f(s.latency_ms.get('p50'))} | {_f(s.latency_ms.get('p99'))} | "
        f"{s.rejected_503_share:.1%} | {_f(s.rejected_503_service_ms.get('p99'))} | "
        f"{_f(srv.batch_size_mean if srv else None, 2)} | "
        f"{_f(srv.queue_wait_p99_ms if srv else None)} |"
    )


def _service_lines(results: BenchResults) -> list[str]:
    lines = [
        "## Service under load (b, c)",
        "",
        "![throughput and latency against offered load](benchmarks.png)",
        "",
    ]
    for title, run in (
        ("batching (b)", results.service),
        ("`CAPTION_MAX_BATCH_SIZE=1` (c)", results.service_batch1),
    ):
        idle, cap = run.idle.latency_ms, run.capacity
        lines += [
            f"### {title}",
            "",
            f"Idle single-request latency p50 {_f(idle.get('p50'))} ms, p99 "
            f"{_f(idle.get('p99'))} ms. Knee criteria: throughput >= "
            f"{cap.criteria.follow_ratio:g} x offered, p99 <= "
            f"{cap.criteria.p99_bound_ms:.0f} ms, errors <= "
            f"{cap.criteria.max_error_share:.0%}; knee: {cap.knee_reason}.",
            "",
            LEVEL_HEAD,
            "|---|---|---|---|---|---|---|---|---|",
            *(_level_row(key, step) for key, step in run.levels.items()),
            "",
        ]
        client = run.level(LEVELS[-1]).client
        if client is not None:
            reached = ", REACHED" if client.connection_limited else ", not reached"
            lines += [
                f"At 2x the generator held up to {client.peak_in_flight} requests in flight "
                f"(connection limit {client.max_connections}{reached}).",
                "",
            ]
    return [
        *lines,
        "503 p99 is measured from the actual send (time to be told no); p50/p99 of accepted "
        "requests from the scheduled send. Raw numbers: `benchmarks.json`.",
        "",
    ]


def _settings_lines(service: ServiceRun) -> list[str]:
    values = ", ".join(f"`{n}={service.setting(n)}`" for n in SETTINGS_SHOWN)
    return [
        "### Service settings in (b)",
        "",
        f"{values} (c) differs only in `max_batch_size=1`.",
        "",
    ]


def _batch_lines(service: ServiceRun) -> list[str]:
    lines = [
        "### Batch sizes the service formed (b), from `/metrics`",
        "",
        "| load | batches | mean | distribution (bucket upper bound: batches) |",
        "|---|---|---|---|",
    ]
    for key, step in service.levels.items():
        srv = step.server
        if srv is None:
            continue
        dist = ", ".join(f"<={k}: {v:.0f}" for k, v in srv.batch_size_distribution.items() if v)
        lines.append(
            f"| {_pct(key)} | {_f(srv.batches, 0)} | {_f(srv.batch_size_mean, 2)} | {dist} |"
        )
    full = service.levels[level_key(1.0)].server
    if full is not None:
        stages = [f"{stage} mean ms per batch {ms:.1f}"
                  for stage, ms in full.mean_ms_per_batch.items()]  # fmt: skip
        if full.preprocess_mean_ms_per_image is not None:
            stages.append(f"preprocess mean ms per image {full.preprocess_mean_ms_per_image:.1f}")
        if stages:
            lines += ["", f"At 100%: {'; '.join(stages)} (ms)."]
    return [*lines, ""]


def _priority_line(priority: Priority) -> str:
    if priority.got == priority.asked:
        group = priority.autogroup
        where = f" (and session autogroup nice {group})" if group is not None else ""
        return (
            f"- The bench and its service ran at nice {priority.got}{where}, other processes "
            "at 0, so other work on this shared machine distorts the figures less; see the CPU "
            "section for what others still took."
        )
    return f"- Scheduling priority: asked nice {priority.asked}, ran at {priority.got}."


def _cpu_lines(results: BenchResults) -> list[str]:
    cpu = results.cpu
    waits = [
        f"| {_pct(key)} | {w.service.cpu_s:.1f} | {w.service.waited_for_cpu_s:.1f} | "
        f"{w.generator.cpu_s:.1f} | {w.generator.waited_for_cpu_s:.1f} |"
        for key, step in results.service.levels.items()
        if (w := step.cpu_wait) is not None
    ]
    wait_table = [
        "Time the service's and the generator's threads spent on a CPU and runnable but "
        "waiting for one (`/proc/PID/task/*/schedstat`) during each load level of (b), in "
        f"seconds of a {results.config.level_s:g} s step:",
        "",
        "| load | service on CPU | service waiting | generator on CPU | generator waiting |",
        "|---|---|---|---|---|",
        *waits,
        "",
    ]
    parts = [
        f"whole run: machine busy {cpu.machine_busy_share:.0%}, other processes "
        f"{cpu.others_share:.0%}"
    ]
    for run, label in ((results.service, "(b)"), (results.service_batch1, "(c)")):
        if run.cpu is not None:
            parts.append(
                f"{label}: busy {run.cpu.machine_busy_share:.0%}, others {run.cpu.others_share:.0%}"
            )
    return [
        "### CPU shared with other processes",
        "",
        "Share of the machine's CPU time (all cores) used by processes outside this benchmark "
        "and its service: " + "; ".join(parts) + ". They take what the bench leaves idle, and "
        "also compete with it: waiting time below is the cost.",
        "",
        *(wait_table if waits else []),
    ]


def _profile_lines(service: ServiceRun) -> list[str]:
    profile: Profile | None = service.profile
    if profile is None:
        return []
    if not profile.available:
        return ["### Profile", "", "py-spy not installed (`pip install -e '.[bench]'`).", ""]
    step = service.profile_step
    if not profile.samples or step is None:
        return ["### Profile", "", f"py-spy gave no samples: {profile.error or ''}", ""]
    lines = [
        "### What bounds the service: py-spy at its max sustained rate (b)",
        "",
        f"An extra {_f(step.offered_rate)}/s step ({step.throughput:.1f}/s served) with "
        f"py-spy sampling every thread of the service ({profile.samples} samples, idle "
        "threads excluded). Inclusive share = samples with the function anywhere on the stack.",
        "",
        "| function (inclusive) | share | function (self) | share |",
        "|---|---|---|---|",
    ]
    for (fi, si), (fs, ss) in zip(profile.inclusive, profile.self_share, strict=False):
        lines.append(f"| `{fi}` | {si:.0%} | `{fs}` | {ss:.0%} |")
    threads = ", ".join(f"{t} {share:.0%}" for t, share in profile.threads)
    return [*lines, "", f"Samples by thread: {threads}.", ""]
