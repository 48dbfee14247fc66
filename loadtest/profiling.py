"""What bounds the service: py-spy samples of the running process, and who else used the CPU.

``PySpy(pid, seconds, out)`` records raw collapsed stacks (``py-spy record --format raw``) in the
background while a load step runs; ``summarise_collapsed`` turns them into the functions that
hold the most samples (self and inclusive) and the busiest threads. py-spy comes with the
``bench`` extra; without it the profile is skipped and the report says so.

``CpuMeter`` reads ``/proc/stat`` and ``os.times()`` to report how much of the machine's CPU went
to *other* processes during a run: on a shared 2-core machine that is part of every figure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    """py-spy's samples of a process: the top functions and the busiest threads, by share."""

    available: bool = True
    """py-spy is installed (the ``bench`` extra)."""
    error: str | None = None
    samples: int = 0
    self_share: list[tuple[str, float]] = field(default_factory=list)
    """Functions at the top of the stack."""
    inclusive: list[tuple[str, float]] = field(default_factory=list)
    """Functions anywhere on the stack (wrapper frames left out, see ``GENERIC``)."""
    threads: list[tuple[str, float]] = field(default_factory=list)


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class PySpy:
    """``py-spy record`` on ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks)."""

    def __init__(self, pid: int, seconds: float, out: Path, *, rate: int = 100) -> None:
        self.out = out
        binary = py_spy_binary()
        self.available = binary is not None
        self._proc: subprocess.Popen[bytes] | None = None
        if binary is not None:
            cmd = [
                binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                "--rate", str(rate), "--format", "raw", "--threads", "--nonblocking",
                "--output", str(out),
            ]  # fmt: skip
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, timeout_s: float = 60.0) -> Profile:
        if self._proc is None:
            return Profile(available=False)
        try:
            _, err = self._proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        if not self.out.is_file():
            return Profile(error=err.decode(errors="replace")[-500:])
        return summarise_collapsed(self.out.read_text())


GENERIC = (
    "Thread._bootstrap", "Thread.run ", "_run_code ", "_run_module_as_main ", "<module> ",
    "main (__main__.py)", "asyncio_run ", "Server.run ", "Server.serve ", "Runner.run ",
    "run (runners.py)", "_worker ", "_WorkItem.run ", "Context.run ", "Handle._run ",
)  # fmt: skip
"""Wrapper frames on nearly every stack; left out of the inclusive ranking (not of self)."""


def _function(frame: str) -> str:
    """``name (path/to/module.py:123)`` -> ``name (module.py)``; thread frames kept as they are."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(file).name})"


def summarise_collapsed(text: str, top: int = 12) -> Profile:
    """Top functions by self and inclusive share of samples, and samples per thread."""
    self_count: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        if frames[0].startswith(("thread", "process")):
            threads[frames[0]] += count
            frames = frames[1:]
        functions = [_function(f) for f in frames]
        if functions:
            self_count[functions[-1]] += count
        for fn in set(functions):
            if not fn.startswith(GENERIC):
                inclusive[fn] += count
    if not total:
        return Profile()
    return Profile(
        samples=total,
        self_share=[(fn, n / total) for fn, n in self_count.most_common(top)],
        inclusive=[(fn, n / total) for fn, n in inclusive.most_common(top)],
        threads=[(t, n / total) for t, n in threads.most_common(6)],
    )


def _proc_stat() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as handle:
        fields = [float(x) for x in handle.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / tick, total / tick


@dataclass(frozen=True)
class CpuShare:
    """Shares of the machine's CPU time (all cores) over a span."""

    machine_busy_share: float
    own_share: float
    """This process and its reaped children."""
    others_share: float


@dataclass
class CpuMeter:
    """CPU used by the machine, by this process and its reaped children, between two reads."""

    busy0: float = 0.0
    total0: float = 0.0
    own0: float = 0.0

    def start(self) -> CpuMeter:
        self.busy0, self.total0 = _proc_stat()
        t = os.times()
        self.own0 = t.user + t.system + t.children_user + t.children_system
        return self

    def read(self) -> CpuShare:
        busy, total = _proc_stat()
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system - self.own0
        machine = busy - self.busy0
        span = total - self.total0
        return CpuShare(
            machine_busy_share=machine / span if span else 0.0,
            own_share=own / span if span else 0.0,
            others_share=max(0.0, machine - own) / span if span else 0.0,
        )


@dataclass(frozen=True)
class ThreadTime:
    """Seconds a process's threads spent on a CPU, and runnable but waiting for one."""

    cpu_s: float
    waited_for_cpu_s: float


@dataclass(frozen=True)
class CpuWait:
    """``ThreadTime`` of the service and of the load generator over one step."""

    service: ThreadTime
    generator: ThreadTime


def schedstat(pid: int | str = "self") -> ThreadTime:
    """Summed over a process's threads, from ``/proc/PID/task/*/schedstat``; zero where the
    kernel does not offer it."""
    on_cpu = waiting = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            fields = stat.read_text().split()
        except OSError:
            continue  # a thread that just exited
        on_cpu += int(fields[0])
        waiting += int(fields[1])
    return ThreadTime(on_cpu / 1e9, waiting / 1e9)


def since(before: ThreadTime, after: ThreadTime) -> ThreadTime:
    return ThreadTime(after.cpu_s - before.cpu_s, after.waited_for_cpu_s - before.waited_for_cpu_s)
