"""``captioner``: ``captioner serve`` (the HTTP service) and ``captioner caption`` (bulk).

``captioner caption INPUT... --out results.jsonl`` captions image files, folders (recursive),
lists of paths or URLs (``-`` is stdin) and CSV/JSONL/Parquet manifests with a ``uri`` column
into one row per input; see docs/bulk.md. Exit status: 0 when every input has its row (error
rows included), 2 for unusable arguments or inputs, 130/143 when SIGINT/SIGTERM stopped the job
(the output stays resumable: rerun the same command).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from batch.sources import IMAGE_PATTERNS, SourceError, load_items
from batch.store import StoreError

EXIT_USAGE = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the HTTP API (same as python -m service)")
    cap = commands.add_parser(
        "caption",
        help="caption a collection into JSONL/CSV/Parquet rows (resumable)",
        description="Caption image files, folders, lists and manifests; one row per input.",
    )
    cap.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder, list, manifest, -")
    cap.add_argument(
        "--out",
        required=True,
        help="results .jsonl/.csv/.parquet (--engine ray: a folder or gs://)",
    )
    cap.add_argument(
        "--glob",
        action="append",
        dest="patterns",
        metavar="PATTERN",
        help=f"file pattern inside folders (repeatable; default {' '.join(IMAGE_PATTERNS)})",
    )
    cap.add_argument(
        "--beam-size", type=int, help="1 = greedy (default: CAPTION_DEFAULT_BEAM_SIZE)"
    )
    cap.add_argument("--num-captions", type=int, help="n-best captions per image (<= beam size)")
    cap.add_argument(
        "--max-length", type=int, help="most tokens per caption (default: the model's)"
    )
    cap.add_argument(
        "--retry-failed", action="store_true", help="redo inputs whose row is an error"
    )
    cap.add_argument("--force", action="store_true", help="recompute everything (old output: .bak)")
    cap.add_argument("--xmp-sidecar", action="store_true", help="write alt text to XMP sidecars")
    cap.add_argument(
        "--sidecar-dir", type=Path, help="sidecars under this folder, mirroring the tree"
    )
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.add_argument("--summary-json", type=Path, help="also write the summary to this file")
    cap.add_argument("--bundle-dir", type=Path, help="model bundle (default: CAPTION_BUNDLE_DIR)")
    remote = cap.add_argument_group("a running service instead of the in-process model")
    remote.add_argument("--endpoint", help="base URL of a captioner service")
    remote.add_argument("--api-key", help="its API key (Authorization: Bearer)")
    remote.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ray = cap.add_argument_group("Ray Data (--engine ray; needs the [ray] extra)")
    ray.add_argument("--engine", choices=("local", "ray"), default="local")
    ray.add_argument("--address", help="Ray cluster address (auto: the one this job runs in)")
    ray.add_argument("--actors", default="1:2", help="MIN:MAX caption actors (default 1:2)")
    ray.add_argument("--cpus-per-actor", type=int, default=1, help="CPUs (and ONNX threads) each")
    ray.add_argument("--batch-size", type=int, default=32, help="images per Ray batch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from service.__main__ import main as serve

        return serve()
    try:
        return caption(args)
    except (SourceError, StoreError, ValidationError, ValueError, RuntimeError) as exc:
        print(f"captioner: {exc}", file=sys.stderr)
        return EXIT_USAGE


def caption(args: argparse.Namespace) -> int:
    from batch.run import run_local, run_ray

    items = load_items(args.inputs, patterns=args.patterns or IMAGE_PATTERNS, stdin=sys.stdin)
    raw_options = {
        "beam_size": args.beam_size,
        "num_captions": args.num_captions,
        "max_length": args.max_length,
    }
    if args.engine == "ray":
        summary = run_ray(args, items, raw_options)
        code = 0
    else:
        summary, stopped_by = asyncio.run(run_local(args, items, raw_options))
        code = EXIT_SIGNAL.get(stopped_by, 1) if stopped_by is not None else 0
    print(summary.line())
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
