"""What ``python -m loadtest bench`` measures and for how long: ``BenchConfig`` and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BULK_SWEEP_BATCH_SIZES = (8, 16, 32)
"""``python -m loadtest bulk`` sweeps (a) over these, one round; ``make bench`` sweeps more."""


@dataclass
class BenchConfig:
    bundle_dir: Path
    images: Path | None
    out_dir: Path
    quick: bool = False
    offline_images: int = 128
    """Images per batch size in (a) and (e)."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    offline_rounds: int = 2
    """Rounds over every batch size in (a) and (e); each size keeps its best round."""
    offline_workers: int = 2
    """(a) and (e) also run this many single-threaded pipelines side by side (the service's
    default: ``CAPTION_MAX_CONCURRENT_BATCHES`` batches on one core each); the ceiling is the
    better of that and one pipeline on every core. 1 = one pipeline only."""
    nice: int = -15
    """Scheduling priority of the benchmark and the service it starts (inherited): on a shared
    machine a negative value keeps other processes from distorting the figures (needs root;
    otherwise the bench runs at its current priority and says so)."""
    idle_s: float = 6.0
    """Closed loop, one client: the idle single-request latency."""
    step_s: float = 8.0
    """Duration of each coarse ramp step."""
    level_s: float = 15.0
    """Duration of the 50/80/100% and 2x runs."""
    paired_rounds: int = 3
    """At (b)'s max sustained rate, this many turns of: the offline pipeline at (a)'s best
    configuration, then a 100% step of the service. b/a is the ratio of their medians: noise on
    a shared machine hits both alike, where (a)'s sweep keeps each size's best round (a lucky
    burst) and the ramp's best step is one run."""
    naive_images: int = 5
    profile: bool = True
    """Sample the service with py-spy during an extra step at its max sustained rate."""
    coarse_steps: int = 10
    """The coarse ramp climbs in steps of ceiling / coarse_steps."""
    fine_steps: int = 3
    """Steps of the finer ramp between the last good coarse step and the knee (0: none); it
    goes on past the knee's rate at the same pitch until one of its steps bends."""
    fine_step_s: float = 15.0
    """Duration of each finer step: near the knee the batches the service forms take seconds
    to settle, and a short step caught by one Poisson burst bends below the true capacity."""
    max_rate: float | None = None
    """Cap on any offered rate (quick mode keeps the generator inside its own limits)."""
    service_env: dict[str, str] = field(default_factory=dict)
    bulk: bool = True
    """Run (g): ``captioner caption`` in process, ``--endpoint`` and on Ray (``loadtest.bulk``)."""
    bulk_images: int = 1000
    """Images (g) captions per run: the first N Flickr8k test images."""
    bulk_rounds: int = 3
    """Turns of (a) and the in-process command, and of the closed loop and each ``--endpoint``
    concurrency; (g) compares medians."""
    bulk_concurrencies: tuple[int, ...] = (16, 32)
    """``--concurrency`` values tried with ``--endpoint``; the best median is reported."""
    bulk_closed_concurrency: int = 32
    """Clients of the saturated closed loop measured in turns with ``--endpoint``."""
    bulk_ray: bool = True
    """Run (g)'s Ray part (needs the ``ray`` extra)."""
    bulk_ray_rounds: int = 2
    """Turns of the in-process command and Ray at each batch size."""
    bulk_ray_batch_sizes: tuple[int, ...] = (16, 64)
    """``--batch-size`` values on Ray: the per-batch cost is their difference."""
    bulk_ray_actors: str = "2:2"
    """``--actors MIN:MAX`` on Ray, one CPU each."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        cfg = cls(bundle_dir=args.bundle, images=args.images, out_dir=args.out_dir)
        cfg.profile = not args.no_profile
        cfg.nice = args.nice
        cfg.bulk, cfg.bulk_ray = not args.no_bulk, not args.no_ray
        if args.quick:
            cfg.quicken()
        if args.bulk_images is not None:
            cfg.bulk_images = args.bulk_images
        for item in args.service_env or []:
            key, _, value = item.partition("=")
            cfg.service_env[key] = value
        return cfg

    @classmethod
    def for_bulk(cls, args: argparse.Namespace) -> BenchConfig:
        """``python -m loadtest bulk``: (g) alone, after a short sweep of (a)."""
        cfg = cls(bundle_dir=args.bundle, images=args.image_dir, out_dir=args.out_dir)
        cfg.nice, cfg.bulk_ray = args.nice, not args.no_ray
        cfg.batch_sizes, cfg.offline_rounds = BULK_SWEEP_BATCH_SIZES, 1
        if args.quick:
            cfg.quicken()
        if args.images is not None:
            cfg.bulk_images = args.images
        cfg.service_env = dict(item.partition("=")[::2] for item in args.service_env)
        return cfg

    def quicken(self) -> None:
        """Every phase, briefly: a smoke test, not a measurement."""
        self.quick = True
        self.offline_images, self.batch_sizes, self.offline_rounds = 16, (1, 4), 1
        self.idle_s, self.step_s, self.level_s, self.fine_step_s = 1.5, 1.5, 1.5, 1.5
        self.naive_images, self.max_rate, self.paired_rounds = 1, 120.0, 1
        self.coarse_steps, self.fine_steps = 3, 0
        self.bulk_images, self.bulk_rounds, self.bulk_ray_rounds = 20, 1, 1
        self.bulk_concurrencies, self.bulk_closed_concurrency = (8,), 8
        self.bulk_ray_batch_sizes = (8,)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    p.add_argument("--images", type=Path, default=None, help="default: Flickr8k test images")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "docs")
    p.add_argument("--quick", action="store_true", help="every phase, briefly (smoke test)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of (b)")
    p.add_argument(
        "--nice",
        type=int,
        default=-15,
        help="scheduling priority for the bench and its service (negative needs root; "
        "default -15 shields the figures from other processes on a shared machine)",
    )
    p.add_argument("--no-bulk", action="store_true", help="skip (g), bulk captioning")
    p.add_argument("--no-ray", action="store_true", help="skip (g)'s Ray runs")
    p.add_argument("--bulk-images", type=int, help="images per run in (g) (default 1000)")
    p.add_argument(
        "--service-env",
        action="append",
        metavar="CAPTION_X=V",
        help="extra service settings for (b) and (c) (repeatable)",
    )


def add_bulk_arguments(p: argparse.ArgumentParser) -> None:
    """``python -m loadtest bulk``."""
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    p.add_argument("--image-dir", type=Path, default=None, help="default: Flickr8k test images")
    p.add_argument("--images", type=int, default=None, help="images per run (default 1000)")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "runs" / "bulk")
    p.add_argument("--quick", action="store_true", help="every part, briefly (smoke test)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray runs")
    p.add_argument("--nice", type=int, default=-15, help="as for `bench` (negative needs root)")
    p.add_argument("--service-env", action="append", metavar="CAPTION_X=V", default=[])
