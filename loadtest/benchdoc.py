"""The benchmark's ratios, targets and ``docs/benchmarks.md``."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TARGETS = {
    "b_over_a": (">=", 0.85),
    "b_over_d": (">=", 10.0),
    "p99_at_80_over_idle": ("<=", 3.0),
    "overload_503_p99_ms": ("<", 50.0),
}


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and the software that matters to the numbers."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    info["load_average_at_start"] = os.getloadavg()
    return info


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """a and b are the medians of the paired runs where the bench made them (the offline
    pipeline at its best configuration and the service at its max sustained rate, in turns),
    else (a)'s best sweep round and the ramp's best step."""
    a = a_sweep = results["offline"]["best"]["throughput"]
    b = b_ramp = results["service"]["capacity"]["max_sustained_throughput"]
    paired = results["service"].get("paired")
    if paired:
        a, b = paired["offline_median"], paired["service_median"]
    c = results["service_batch1"]["capacity"]["max_sustained_throughput"]
    d = results["naive"]["throughput"]
    out: dict[str, Any] = {"a": a, "b": b, "c": c, "d": d, "a_sweep": a_sweep, "b_ramp": b_ramp}
    out["b_over_a"] = _div(b, a)
    out["b_over_c"] = _div(b, c)
    out["b_over_d"] = _div(b, d)
    if "offline_int8" in results:
        i8 = results["offline_int8"]
        out["e_int8_over_fp32"] = _div(i8["best"]["throughput"], a)
        out["e_int8_over_fp32_encoder"] = _div(
            i8["best_encoder"]["encoder_throughput"],
            results["offline"]["best_encoder"]["encoder_throughput"],
        )
    out["f_encoder_fraction_of_peak"] = results["roofline"]["encoder_fraction_of_peak"]
    levels = results["service"]["levels"]
    idle = results["service"]["idle"]["latency_ms"].get("p50")
    out["idle_p50_ms"] = idle
    out["p99_at_80_over_idle"] = _div(levels["0.8"]["latency_ms"].get("p99"), idle)
    floor = p99_floor(
        results["offline"]["rows"],
        levels["0.8"]["offered_rate"],
        idle,
        parallel_rows=results["offline"].get("parallel_rows") or None,
    )
    out["p99_at_80_floor"] = floor
    out["p99_at_80_over_idle_floor"] = floor["ratio"] if floor else None
    over = levels["2"]
    out["overload_503_share"] = over["rejected_503_share"]
    out["overload_503_p99_ms"] = over["rejected_503_service_ms"].get("p99")
    out["overload_accepted_p99_ms"] = over["latency_ms"].get("p99")
    out["overload_accepted_max_ms"] = over["latency_max_ms"]
    out["overload_errors"] = over["errors"]
    deadline_ms = 1000 * service_setting(results, "request_timeout_s")
    out["deadline_ms"] = deadline_ms
    out["overload_accepted_within_deadline"] = (
        over["latency_max_ms"] is None or over["latency_max_ms"] <= deadline_ms
    )
    return out


def p99_floor(
    rows: list[dict[str, Any]],
    rate: float | None,
    idle_p50_ms: float | None,
    *,
    parallel_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """A floor under p99 / idle p50 at ``rate`` (80% of the service's capacity), from the offline
    throughput by batch size (a); ``None`` when no batch size of (a) keeps up with the rate.

    ``loadtest.queue_model`` runs an ideal batching server on Poisson arrivals at ``rate``: one
    batch at a time on the whole CPU, each taking the offline pipeline's time for its size (or,
    with ``parallel_rows``, single-threaded batches side by side at their measured times), the
    model starting on everything waiting the moment it is free, the kindest batch cap and
    layout. To its
    p99 the floor adds what an idle request pays outside the model (HTTP, upload, hand-offs:
    idle p50 - T(1), T(1) = 1 / offline throughput at batch 1). A real service also shares the
    cores with image decoding, HTTP and, here, the load generator, so its p99 can only be
    higher: a target below the floor cannot be met on this machine by tuning the batcher."""
    if not rate or not idle_p50_ms or not rows:
        return None
    from .queue_model import ideal_p99

    ordered = sorted(rows, key=lambda r: r["batch_size"])
    t1_ms = 1000.0 / ordered[0]["throughput"] if ordered[0]["batch_size"] == 1 else None
    outside_ms = max(0.0, idle_p50_ms - t1_ms) if t1_ms is not None else 0.0
    layouts = [ideal_p99(ordered, rate)]
    if parallel_rows:  # single-threaded batches side by side, as the service runs them
        layouts.append(ideal_p99(parallel_rows, rate, servers=int(parallel_rows[0]["workers"])))
    found = [layout for layout in layouts if layout is not None]
    if not found:
        return None
    ideal = min(found, key=lambda layout: layout["p99_ms"])
    floor_ms = ideal["p99_ms"] + outside_ms
    return {
        "rate": rate,
        "model": "ideal batching server, Poisson arrivals (loadtest.queue_model)",
        **ideal,
        "outside_model_ms": outside_ms,
        "p99_floor_ms": floor_ms,
        "ratio": floor_ms / idle_p50_ms,
    }


def service_setting(results: dict[str, Any], name: str) -> Any:
    """The value the service ran with: the bench's override, else the Settings default."""
    from service.settings import Settings

    env = results["service"].get("env", {})
    raw = env.get(f"CAPTION_{name.upper()}")
    default = Settings.model_fields[name].default
    return type(default)(raw) if raw is not None else default


def verdict(name: str, value: float | None) -> str:
    if name not in TARGETS:
        return ""
    if value is None:
        return "n/a"
    op, bound = TARGETS[name]
    ok = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
    return f"{'met' if ok else 'MISSED'} (target {op} {bound:g})"


def _servers(floor: dict[str, Any]) -> str:
    servers = int(floor.get("servers", 1))
    return "one batch at a time" if servers == 1 else f"{servers} batches side by side"


def _layout(row: dict[str, Any]) -> str:
    """How the offline row ran: one pipeline on every core, or N single-threaded side by side."""
    workers = int(row.get("workers", 1))
    return "1 pipeline on all cores" if workers == 1 else f"{workers} pipelines x 1 thread"


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio_lines(r: dict[str, Any]) -> str:
    names = [
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
    ]
    lines = [
        f"{label:<38} {_f(r.get(key), 3):>9}  {verdict(key, r.get(key))}" for label, key in names
    ]
    floor = r.get("p99_at_80_over_idle_floor")
    if floor is not None:
        at = next(i for i, (_, key) in enumerate(names) if key == "p99_at_80_over_idle_floor")
        bound = TARGETS["p99_at_80_over_idle"][1]
        lines[at] += (
            f"  > {bound:g}: out of reach by batching here"
            if floor > bound
            else f"  <= {bound:g}: in reach in this model"
        )
    if "overload_accepted_within_deadline" in r:
        ok = r["overload_accepted_within_deadline"]
        lines[-1] += f"  {'met' if ok else 'MISSED'} (deadline {r['deadline_ms']:.0f} ms)"
    return "\n".join(lines)


def _finished(results: dict[str, Any]) -> datetime:
    """When the bench run ended (the report can be rewritten later from ``benchmarks.json``)."""
    stamp = results.get("finished_utc")
    return datetime.fromisoformat(stamp) if isinstance(stamp, str) else datetime.now(UTC)


def _level_rows(service: dict[str, Any]) -> list[str]:
    rows = []
    for frac, s in service["levels"].items():
        lat = s["latency_ms"]
        srv = s.get("server", {})
        rows.append(
            f"| {float(frac):.0%} | {s['offered_rate']:.1f} | {s['throughput']:.1f} | "
            f"{_f(lat.get('p50'))} | {_f(lat.get('p99'))} | {s['rejected_503_share']:.1%} | "
            f"{_f(s['rejected_503_service_ms'].get('p99'))} | "
            f"{_f(srv.get('batch_size_mean'), 2)} | {_f(srv.get('queue_wait_p99_ms'))} |"
        )
    return rows


def write(path: Path, results: dict[str, Any], *, quick: bool) -> Path:
    r = results["ratios"]
    m = results["machine"]
    off = results["offline"]
    svc, svc1 = results["service"], results["service_batch1"]
    roof = results["roofline"]
    naive = results["naive"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m loadtest bench`); do not edit by hand.",
        "",
    ]
    if quick:
        lines += [
            "**QUICK MODE: a smoke run with very short steps; these are not measurements.**",
            "",
        ]
    lines += [
        f"- Date: {_finished(results):%Y-%m-%d %H:%M} UTC; "
        f"whole run {results.get('wall_s', 0):.0f} s.",
        "- Command: `make bench` "
        f"(= `python -m loadtest bench --bundle {results['bundle']['dir']}`).",
        f"- Machine: {m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs "
        f"({m['cores_usable']} usable), {m.get('memory_gib', '?')} GiB, "
        f"{m.get('Hypervisor vendor', 'bare metal')} VM; Python {m['python']}, "
        f"ONNX Runtime {m.get('onnxruntime', '?')}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}.",
        f"- Bundle: `{results['bundle']['name']}` {results['bundle']['version']} "
        f"(encoder {results['bundle']['encoder']}, decoder {results['bundle']['decoder']}).",
        f"- Images: {results['images']['folder']} ({results['images']['available']} available; "
        f"{results['images']['used']} used offline and by the load generator).",
        "- The load generator runs on the same 2 cores as the service: every HTTP figure pays "
        "for the client's CPU too.",
        _priority_line(results.get("priority")),
        "",
        "## Summary",
        "",
        "| | configuration | captions/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| a | offline in-process pipeline, best batch {off['best']['batch_size']}, "
        f"{_layout(off['best'])} (ceiling{_median_note(svc)}) | "
        f"{_f(r['a'])} | | |",
        f"| b | service over HTTP, batching (max sustained{_median_note(svc)}) | {_f(r['b'])} | "
        f"{_f(svc['levels']['1']['latency_ms'].get('p50'))} | "
        f"{_f(svc['levels']['1']['latency_ms'].get('p99'))} |",
        f"| c | service, `CAPTION_MAX_BATCH_SIZE=1` (max sustained) | {_f(r['c'])} | "
        f"{_f(svc1['levels']['1']['latency_ms'].get('p50'))} | "
        f"{_f(svc1['levels']['1']['latency_ms'].get('p99'))} |",
        f"| d | naive baseline ({naive['label']}; {naive['images']} images, 1 / mean latency) | "
        f"{_f(r['d'], 3)} | {_f(1000 * naive['mean_s'], 0)} (mean) | |",
    ]
    if "offline_int8" in results:
        i8 = results["offline_int8"]
        lines.append(
            f"| e | offline pipeline, int8 encoder, best batch {i8['best']['batch_size']}, "
            f"{_layout(i8['best'])} | "
            f"{_f(i8['best']['throughput'])} | | |"
        )
    lines += [
        "",
        f"The naive baseline's greedy captions equal the ONNX model's on "
        f"{naive.get('captions_match', '?')} of {naive['images']} images (same weights). "
        f"It took {naive['mean_s']:.2f} s per image; at that pace the 1,000 test images take "
        f"{1000 * naive['mean_s'] / 60:.0f} min, against {1000 / r['b'] / 60 if r['b'] else 0:.1f} "
        "min through the batching service.",
    ]
    lines += [
        "",
        "p50/p99 for b and c are at 100% of their max sustained rate (Poisson arrivals), measured "
        "from each request's scheduled send time.",
        "",
        *_paired_lines(results),
        "## Ratios and targets",
        "",
        "```",
        ratio_lines(r),
        "```",
        "",
        *_floor_lines(results),
        "## Offline pipeline by batch size (a, e)",
        "",
        "| encoder | batch | end to end img/s, 1 pipeline on all cores | end to end img/s, "
        "pipelines side by side, 1 thread each | encoder only img/s |",
        "|---|---|---|---|---|",
    ]
    for block in [off, results.get("offline_int8")]:
        if block:
            side = {row["batch_size"]: row for row in block.get("parallel_rows", [])}
            for row in block["rows"]:
                other = side.get(row["batch_size"])
                parallel = f"{other['throughput']:.1f} ({other['workers']} x)" if other else ""
                lines.append(
                    f"| {'int8' if block['int8'] else 'fp32'} | {row['batch_size']} | "
                    f"{row['throughput']:.1f} | {parallel} | {row['encoder_throughput']:.1f} |"
                )
    lines += [
        "",
        f"Sample captions: {'; '.join(repr(c) for c in off['sample_captions'])}.",
        "",
        "## Roofline (f)",
        "",
        f"- Encoder: {roof['encoder_gflops_per_image']:.3f} GFLOP per image (2 x MACs of "
        f"Conv/MatMul/Gemm, counted with ONNX shape inference at batch 1; "
        f"{roof['encoder_macs_by_op']}); decoder {roof['decoder_mflops_per_step']:.2f} MFLOP "
        "per step.",
        f"- Peak: {roof['peak_gflops']:.1f} GFLOP/s, the better of a large float32 matmul "
        f"in ONNX Runtime ({roof.get('peak_gflops_onnxruntime', 0):.1f}, its MLAS kernels) and "
        f"in NumPy ({roof.get('peak_gflops_numpy', 0):.1f}, best of 2 x 10 runs); NumPy's BLAS "
        "may not use this CPU's widest vector units.",
        f"- Encoder alone at its best batch: {roof['encoder_achieved_gflops']:.1f} GFLOP/s = "
        f"{roof['encoder_fraction_of_peak']:.1%} of peak; the whole offline pipeline's images/s "
        f"puts the encoder at {roof['pipeline_encoder_fraction_of_peak']:.1%}.",
        "",
        "## Service under load (b, c)",
        "",
        "![throughput and latency against offered load](benchmarks.png)",
        "",
    ]
    head = (
        "| load | offered /s | ok /s | p50 ms | p99 ms | 503 share | 503 p99 ms | "
        "mean batch | queue wait p99 ms |"
    )
    for title, block in (("batching (b)", svc), ("`CAPTION_MAX_BATCH_SIZE=1` (c)", svc1)):
        idle = block["idle"]["latency_ms"]
        cap = block["capacity"]
        lines += [
            f"### {title}",
            "",
            f"Idle single-request latency p50 {_f(idle.get('p50'))} ms, p99 "
            f"{_f(idle.get('p99'))} ms. Knee criteria: throughput >= "
            f"{cap['criteria']['follow_ratio']:g} x offered, p99 <= "
            f"{cap['criteria']['p99_bound_ms']:.0f} ms, errors <= "
            f"{cap['criteria']['max_error_share']:.0%}; knee: {cap['knee_reason']}.",
            "",
            head,
            "|---|---|---|---|---|---|---|---|---|",
            *_level_rows(block),
            "",
        ]
        over_client = block["levels"]["2"].get("client", {})
        if over_client:
            lines += [
                f"At 2x the generator held up to {over_client['peak_in_flight']} requests in "
                f"flight (connection limit {over_client['max_connections']}"
                f"{', REACHED' if over_client['connection_limited'] else ', not reached'}).",
                "",
            ]
    lines += [
        "503 p99 is measured from the actual send (time to be told no); p50/p99 of accepted "
        "requests from the scheduled send. Raw numbers: `benchmarks.json`.",
        "",
        *_settings_lines(results),
        *_batch_lines(svc),
        *_cpu_lines(results),
        *_profile_lines(svc.get("profile")),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _median_note(service: dict[str, Any]) -> str:
    paired = service.get("paired")
    return f"; median of {len(paired['rounds'])} paired runs" if paired else ""


def _paired_lines(results: dict[str, Any]) -> list[str]:
    """The turns of (a) and (b) that b/a is taken from."""
    paired = results["service"].get("paired")
    if not paired:
        return []
    r = results["ratios"]
    rows = [
        f"| {i} | {x['offline']:.1f} | {x['service']:.1f} | {_f(x['p50_ms'])} | "
        f"{_f(x['p99_ms'])} | {x['service'] / x['offline']:.3f} |"
        for i, x in enumerate(paired["rounds"], start=1)
    ]
    return [
        "### Paired runs: where a and b come from",
        "",
        f"After (b)'s ramp, in turns: the offline pipeline at (a)'s best configuration, then the "
        f"service at its max sustained rate ({paired['rate']:.1f}/s offered, Poisson, "
        f"{results['config']['level_s']:g} s). a and b are the medians (the service's p50/p99 in "
        "the summary and at 100% below are from its median run). Noise on this shared machine "
        "hits both alike this way; (a)'s sweep keeps each batch size's best round, and the "
        f"ramp's best step is a single run: they gave a = {_f(r.get('a_sweep'))} and b = "
        f"{_f(r.get('b_ramp'))} (throughput counts the answers in each step's steady window; "
        "see `loadtest.stats`).",
        "",
        "| run | offline img/s | service captions/s | service p50 ms | service p99 ms | ratio |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _floor_lines(results: dict[str, Any]) -> list[str]:
    """What bounds p99 at 80%: the floor's model and numbers, and where the measured p99 went."""
    r = results["ratios"]
    floor = r.get("p99_at_80_floor")
    if not floor:
        return []
    level = results["service"]["levels"]["0.8"]
    srv = level.get("server", {})
    batch_ms = sum(srv.get(f"{stage}_mean_ms_per_batch", 0.0) for stage in ("encode", "decode"))
    measured = (
        f"Measured at 80%: p99 {_f(level['latency_ms'].get('p99'))} ms from the scheduled send; "
        f"in the service, queue wait p99 {_f(srv.get('queue_wait_p99_ms'))} ms, mean batch "
        f"{_f(srv.get('batch_size_mean'), 2)} taking {batch_ms:.1f} ms (encode + decode mean)."
    )
    return [
        "### What bounds p99 at 80% (floor from (a))",
        "",
        f"An ideal batching server (`loadtest.queue_model`) gets Poisson arrivals at 80% of (b), "
        f"{floor['rate']:.1f}/s. It runs one batch at a time on the whole CPU, or single-threaded "
        "batches side by side, each taking the offline pipeline's measured time for its size in "
        "that layout (a), and starts on everything waiting the moment a model is free; nothing "
        "else takes CPU and no hand-off costs anything. Over every batch cap and both layouts, "
        f"the kindest ({_servers(floor)}, cap {floor['max_batch']}, mean batch "
        f"{floor['batch_size_mean']:.2f}, model busy {100 * floor['busy_fraction']:.0f}% of the "
        f"time) gives p50 {floor['p50_ms']:.1f} ms and p99 {floor['p99_ms']:.1f} ms. Adding what "
        "an idle request pays outside the model (idle p50 - offline T(1) = "
        f"{floor['outside_model_ms']:.1f} ms: HTTP, upload, hand-offs), the floor is p99 >= "
        f"{floor['p99_floor_ms']:.1f} ms = {floor['ratio']:.2f} x idle p50 (target <= "
        f"{TARGETS['p99_at_80_over_idle'][1]:g}). The wait comes from the Poisson bursts: at 80% "
        "load the backlog a burst leaves takes several batch times to clear. A real service also "
        "shares the cores with image decoding, HTTP and, here, the load generator, so its p99 "
        "can only be higher.",
        "",
        measured,
        "",
    ]


SETTINGS_SHOWN = (
    "max_batch_size", "max_wait_ms", "queue_size", "max_concurrent_batches", "intra_op_threads",
    "decode_threads", "use_int8", "request_timeout_s",
)  # fmt: skip


def _settings_lines(results: dict[str, Any]) -> list[str]:
    values = ", ".join(f"`{n}={service_setting(results, n)}`" for n in SETTINGS_SHOWN)
    return [
        "### Service settings in (b)",
        "",
        f"{values} (c) differs only in `max_batch_size=1`.",
        "",
    ]


def _batch_lines(svc: dict[str, Any]) -> list[str]:
    lines = ["### Batch sizes the service formed (b), from `/metrics`", ""]
    lines += ["| load | batches | mean | distribution (bucket upper bound: batches) |"]
    lines += ["|---|---|---|---|"]
    for frac, step in svc["levels"].items():
        srv = step.get("server", {})
        dist = ", ".join(
            f"<={k}: {v:.0f}" for k, v in srv.get("batch_size_distribution", {}).items() if v
        )
        lines.append(
            f"| {float(frac):.0%} | {_f(srv.get('batches'), 0)} | "
            f"{_f(srv.get('batch_size_mean'), 2)} | {dist} |"
        )
    level = svc["levels"].get("1", {}).get("server", {})
    stages = [
        f"{k.replace('_', ' ')} {v:.1f}" for k, v in level.items() if k.endswith(("_per_batch",
        "_per_image"))
    ]  # fmt: skip
    if stages:
        lines += ["", f"At 100%: {'; '.join(stages)} (ms)."]
    return [*lines, ""]


def _priority_line(priority: dict[str, Any] | None) -> str:
    if not priority:
        return "- Scheduling priority: not recorded."
    if priority["got"] == priority["asked"]:
        group = priority.get("autogroup")
        where = f" (and session autogroup nice {group})" if group is not None else ""
        return (
            f"- The bench and its service ran at nice {priority['got']}{where}, other processes "
            "at 0, so other work on this shared machine distorts the figures less; see the CPU "
            "section for what others still took."
        )
    return f"- Scheduling priority: asked nice {priority['asked']}, ran at {priority['got']}."


def _cpu_lines(results: dict[str, Any]) -> list[str]:
    cpu = results.get("cpu")
    if not cpu:
        return []
    waits = []
    for frac, step in results["service"]["levels"].items():
        w = step.get("cpu_wait")
        if w:
            waits.append(
                f"| {float(frac):.0%} | {w['service']['cpu_s']:.1f} | "
                f"{w['service']['waited_for_cpu_s']:.1f} | {w['generator']['cpu_s']:.1f} | "
                f"{w['generator']['waited_for_cpu_s']:.1f} |"
            )
    wait_table = [
        "Time the service's and the generator's threads spent on a CPU and runnable but "
        "waiting for one (`/proc/PID/task/*/schedstat`) during each load level of (b), in "
        f"seconds of a {results['config']['level_s']:g} s step:",
        "",
        "| load | service on CPU | service waiting | generator on CPU | generator waiting |",
        "|---|---|---|---|---|",
        *waits,
        "",
    ]
    parts = [
        f"whole run: machine busy {cpu['machine_busy_share']:.0%}, other processes "
        f"{cpu['others_share']:.0%}"
    ]
    for key, label in (("service", "(b)"), ("service_batch1", "(c)")):
        if "cpu" in results[key]:
            c = results[key]["cpu"]
            parts.append(
                f"{label}: busy {c['machine_busy_share']:.0%}, others {c['others_share']:.0%}"
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


def _profile_lines(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return []
    if not profile.get("available"):
        return ["### Profile", "", "py-spy not installed (`pip install -e '.[bench]'`).", ""]
    if not profile.get("samples"):
        return ["### Profile", "", f"py-spy gave no samples: {profile.get('error', '')}", ""]
    step = profile["step"]
    lines = [
        "### What bounds the service: py-spy at its max sustained rate (b)",
        "",
        f"An extra {step['offered_rate']:.1f}/s step ({step['throughput']:.1f}/s served) with "
        f"py-spy sampling every thread of the service ({profile['samples']} samples, idle "
        "threads excluded). Inclusive share = samples with the function anywhere on the stack.",
        "",
        "| function (inclusive) | share | function (self) | share |",
        "|---|---|---|---|",
    ]
    for (fi, si), (fs, ss) in zip(profile["inclusive"], profile["self"], strict=False):
        lines.append(f"| `{fi}` | {si:.0%} | `{fs}` | {ss:.0%} |")
    threads = ", ".join(f"{t} {share:.0%}" for t, share in profile["threads"])
    return [*lines, "", f"Samples by thread: {threads}.", ""]
