"""The machine the bench ran on, and the scheduling priority it ran at."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")
LSCPU_FIELDS = {
    "Model name": "model_name",
    "CPU(s)": "cpus",
    "Thread(s) per core": "threads_per_core",
    "Hypervisor vendor": "hypervisor",
}


@dataclass(frozen=True)
class Machine:
    """CPU model, cores, memory and the software that matters to the numbers."""

    python: str
    platform: str
    cores_usable: int
    load_average_at_start: tuple[float, float, float]
    model_name: str | None = None
    cpus: str | None = None
    threads_per_core: str | None = None
    hypervisor: str | None = None
    """``None`` on bare metal."""
    memory_gib: float | None = None
    onnxruntime: str | None = None


def machine() -> Machine:
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in LSCPU_FIELDS:
                found[LSCPU_FIELDS[key.strip()]] = value.strip()
    memory = None
    with contextlib.suppress(ValueError, OSError):
        memory = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    ort = None
    with contextlib.suppress(ImportError):
        import onnxruntime

        ort = str(onnxruntime.__version__)
    return Machine(
        python=platform.python_version(),
        platform=platform.platform(),
        cores_usable=len(os.sched_getaffinity(0)),
        load_average_at_start=os.getloadavg(),
        memory_gib=memory,
        onnxruntime=ort,
        **found,
    )


@dataclass(frozen=True)
class Priority:
    asked: int
    got: int
    autogroup: int | None
    """The session's autogroup nice (``None``: the kernel has no ``sched_autogroup``)."""
    before: int
    autogroup_before: int | None


def _autogroup_nice() -> int | None:
    try:
        return int(AUTOGROUP.read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def set_priority(nice: int) -> Priority:
    """Process nice (inherited by the service) and, where the kernel groups processes by
    session (``sched_autogroup``: nice then only ranks processes *within* a session), the
    session's autogroup nice too, which is what ranks it against other sessions."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    group_before = _autogroup_nice()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        if group_before is not None:
            AUTOGROUP.write_text(f"{nice}\n")
    except OSError as exc:
        print(f"could not set priority {nice} ({exc}); running at {before}", flush=True)
    return Priority(
        asked=nice,
        got=os.getpriority(os.PRIO_PROCESS, 0),
        autogroup=_autogroup_nice(),
        before=before,
        autogroup_before=group_before,
    )


def restore_priority(priority: Priority) -> None:
    """The session's other processes go back to their autogroup nice."""
    if priority.autogroup_before is not None and priority.autogroup is not None:
        with contextlib.suppress(OSError):
            AUTOGROUP.write_text(f"{priority.autogroup_before}\n")
