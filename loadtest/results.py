"""Everything one ``make bench`` run measured: ``BenchResults``, written as ``benchmarks.json``.

``save`` writes it with ``dataclasses.asdict``; ``load`` reads it back (``loadtest.serde``), so
the report can be rewritten from the JSON alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.benchconfig import BenchConfig
from loadtest.bulk import BulkResult
from loadtest.ceiling import OfflineResult
from loadtest.host import Machine, Priority
from loadtest.naive import NaiveResult
from loadtest.profiling import CpuShare
from loadtest.ratios import Ratios
from loadtest.report import write_json
from loadtest.roofline import Roofline
from loadtest.serde import from_dict
from loadtest.service_run import ServiceRun


@dataclass(frozen=True)
class ImagesUsed:
    folder: str
    available: int
    used: int
    """Images timed offline and sent by the load generator."""


@dataclass(frozen=True)
class BundleInfo:
    dir: str
    name: str
    version: str
    encoder: str
    decoder: str
    int8: str | None
    """The int8 encoder's file, if the bundle has one."""


@dataclass(frozen=True)
class BenchResults:
    config: BenchConfig
    machine: Machine
    images: ImagesUsed
    bundle: BundleInfo
    offline: OfflineResult
    """(a)"""
    offline_int8: OfflineResult | None
    """(e); ``None`` when the bundle has no int8 encoder."""
    roofline: Roofline
    """(f)"""
    service: ServiceRun
    """(b)"""
    service_batch1: ServiceRun
    """(c)"""
    naive: NaiveResult
    """(d)"""
    ratios: Ratios
    wall_s: float
    finished_utc: str
    cpu: CpuShare
    """The whole run."""
    priority: Priority
    bulk: BulkResult | None = None
    """(g); ``None``: not run (``--no-bulk``)."""


def save(path: Path, results: BenchResults) -> Path:
    return write_json(path, asdict(results))


def load(path: Path) -> BenchResults:
    return from_dict(BenchResults, json.loads(Path(path).read_text()))
