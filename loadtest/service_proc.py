"""Run ``python -m service`` as a subprocess on 127.0.0.1 for a benchmark or a test.

    with ServiceProcess(bundle_dir, env={"CAPTION_MAX_BATCH_SIZE": "1"}) as svc:
        svc.base_url   # ready: /readyz answered 200

Its output goes to a log file (``log_path``), shown in the error if it never becomes ready, and
removed after a clean exit unless the caller chose the path. It is stopped with SIGTERM (graceful
drain) and killed if it has not exited within ``stop_timeout_s``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceNotReady(RuntimeError):
    """The service exited or did not answer /readyz in time."""


class ServiceProcess:
    def __init__(
        self,
        bundle_dir: Path,
        *,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 30.0,
        log_path: Path | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.port = free_port()
        self.extra_env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="captioner-", suffix=".log")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTION_")}
        env.update(
            {
                "CAPTION_BUNDLE_DIR": str(self.bundle_dir),
                "CAPTION_HOST": "127.0.0.1",
                "CAPTION_PORT": str(self.port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> ServiceProcess:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "service"],
                cwd=REPO_ROOT,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    raise ServiceNotReady(f"service exited ({code}):\n{self.log()}")
                try:
                    if client.get(f"{self.base_url}/readyz").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise ServiceNotReady(f"not ready after {self.ready_timeout_s:g} s:\n{self.log()}")

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        code = self.stop()
        if self._own_log and exc is None and code == 0:
            self.log_path.unlink(missing_ok=True)  # kept when something went wrong
