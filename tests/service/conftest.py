"""Real servers for end-to-end tests: uvicorn on 127.0.0.1 (a free port) in a thread or a process.

``start_server(**settings)`` runs ``service.app.create_app`` under a real uvicorn in a background
thread, waits for ``/readyz`` and yields a ``RunningServer`` (base URL + the app's metrics);
``served`` is one shared server on the tiny bundle with default settings. ``start_process``
runs ``python -m service`` (for signals and exit codes).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.metrics import Metrics
from service.model import CaptionModel
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningServer:
    url: str
    settings: Settings
    metrics: Metrics

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_ready(
    url: str, timeout: float = 30.0, *, alive: Callable[[], bool] = lambda: True
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive():
            raise RuntimeError("server stopped before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout}s")


@contextlib.contextmanager
def run_server(
    bundle: Path, *, model: CaptionModel | None = None, wait: bool = True, **overrides: Any
) -> Iterator[RunningServer]:
    sock = free_socket()
    port = sock.getsockname()[1]
    overrides.setdefault("cache_size", 0)  # tests re-post the same images to reach the model
    settings = Settings(bundle_dir=bundle, host="127.0.0.1", port=port, **overrides)
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry, model=model)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if wait:
            wait_ready(url, alive=thread.is_alive)
        else:
            while not server.started:
                assert thread.is_alive(), "server thread died"
                time.sleep(0.01)
        yield RunningServer(url=url, settings=settings, metrics=app.state.metrics)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def start_server(tiny_bundle: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``start_server(max_batch_size=2, ...)`` -> a running server, stopped after."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> RunningServer:
            return stack.enter_context(run_server(tiny_bundle, **overrides))

        yield start


@pytest.fixture(scope="module")
def served(tiny_bundle: Path) -> Iterator[RunningServer]:
    """One server on the tiny bundle, shared by a test module."""
    with run_server(tiny_bundle, request_timeout_s=20.0) as running:
        yield running


@dataclass
class ServiceProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_process(bundle: Path, log_path: Path, **env: str) -> Iterator[ServiceProcess]:
    """``python -m service`` on a free port, output to ``log_path``; the caller waits for it."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAPTION_")}
    environ.update(
        CAPTION_BUNDLE_DIR=str(bundle),
        CAPTION_PORT=str(port),
        CAPTION_LOG_JSON="true",
        CAPTION_CACHE_SIZE="0",  # tests re-post the same images to reach the model
    )
    environ.update(env)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO_ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield ServiceProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
