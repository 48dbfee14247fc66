"""Real servers for end-to-end tests: uvicorn on 127.0.0.1 (a free port) in a thread or a process.

``start_server(**settings)`` runs ``service.app.create_app`` under a real uvicorn in a background
thread, waits for ``/readyz`` and yields a ``RunningServer`` (base URL + the app's metrics);
``served`` is one shared server on the tiny bundle with default settings. ``run_process`` runs
``python -m service`` (for signals, exit codes and the process's own resources): the one way the
tests start the service as a process. Both use ``CAPTION_CACHE_SIZE=0`` unless told otherwise, as
tests re-post the same images to reach the model.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
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
from tests.polling import wait_until

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
    """Poll ``/readyz`` until it answers 200; ``alive() == False`` (the server died) ends it."""

    def ready() -> bool:
        if not alive():
            raise RuntimeError(f"{url} stopped before it was ready")
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200

    wait_until(
        ready,
        what=f"{url}/readyz answering 200",
        timeout=timeout,
        interval=0.05,
        ignore=(httpx.HTTPError,),
    )


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

            def started() -> bool:
                assert thread.is_alive(), "server thread died"
                return server.started

            wait_until(started, what="uvicorn listening", timeout=30.0)
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
def run_process(
    bundle: Path | None,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    ready: bool = True,
    ready_timeout: float = 60.0,
    cwd: Path = REPO_ROOT,
) -> Iterator[ServiceProcess]:
    """``python -m service`` on a free port, output to ``log_path``, killed after if still up.

    ``ready``: wait for ``/readyz`` (the error carries the log); ``ready=False`` hands it over
    at once (to watch it exit). ``bundle=None`` leaves ``CAPTION_BUNDLE_DIR`` unset (the
    default bundle). The environment is the caller's without ``CAPTION_*``, plus JSON logs,
    ``CAPTION_CACHE_SIZE=0`` and ``env`` (``{"CAPTION_QUEUE_SIZE": "2"}``).
    """
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAPTION_")}
    environ.update(
        CAPTION_PORT=str(port),
        CAPTION_LOG_JSON="true",
        CAPTION_CACHE_SIZE="0",  # tests re-post the same images to reach the model
    )
    if bundle is not None:
        environ["CAPTION_BUNDLE_DIR"] = str(bundle)
    environ.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=cwd,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc = ServiceProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
        try:
            if ready:
                try:
                    wait_ready(proc.url, ready_timeout, alive=lambda: process.poll() is None)
                except (RuntimeError, TimeoutError) as exc:
                    raise RuntimeError(f"service did not start:\n{proc.log()}") from exc
            yield proc
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
