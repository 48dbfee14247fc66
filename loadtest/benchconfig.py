"""What ``python -m loadtest bench`` measures and for how long: ``BenchConfig`` and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        cfg = cls(bundle_dir=args.bundle, images=args.images, out_dir=args.out_dir)
        cfg.profile = not args.no_profile
        cfg.nice = args.nice
        if args.quick:
            cfg.quick = True
            cfg.offline_images, cfg.batch_sizes, cfg.offline_rounds = 16, (1, 4), 1
            cfg.idle_s, cfg.step_s, cfg.level_s, cfg.fine_step_s = 1.5, 1.5, 1.5, 1.5
            cfg.naive_images, cfg.max_rate, cfg.paired_rounds = 1, 120.0, 1
            cfg.coarse_steps, cfg.fine_steps = 3, 0
        for item in args.service_env or []:
            key, _, value = item.partition("=")
            cfg.service_env[key] = value
        return cfg


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
    p.add_argument(
        "--service-env",
        action="append",
        metavar="CAPTION_X=V",
        help="extra service settings for (b) and (c) (repeatable)",
    )
