"""Fixtures of the reliability suite: real servers (thread or process) and process probes.

``server`` starts ``service.app`` under a real uvicorn in this process (metrics readable
directly); ``service_process`` runs ``python -m service`` as a child (signals, RSS and open file
descriptors of the server alone). Long variants are marked ``slow`` (``--run-slow``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.promscrape import Snapshot, parse
from service import errors
from service.app import HTTP_CODES
from tests.service.conftest import RunningServer, ServiceProcess, run_process, run_server


@pytest.fixture(scope="session")
def heavy_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with an encoder of ~20 ms an image (see heavy_bundle.py)."""
    from tests.reliability.heavy_bundle import build_heavy_bundle

    return build_heavy_bundle(tiny_bundle, tmp_path_factory.mktemp("heavy") / "heavy")


@pytest.fixture
def server(tiny_bundle: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``server(bundle=None, rate_limit_per_s=1, ...)`` -> a running in-process server
    on the tiny bundle (or ``bundle``)."""
    with contextlib.ExitStack() as stack:

        def start(bundle: Path | None = None, **overrides: Any) -> RunningServer:
            return stack.enter_context(run_server(bundle or tiny_bundle, **overrides))

        yield start


ServiceFactory = Callable[..., ServiceProcess]


@pytest.fixture
def service_process(tiny_bundle: Path, tmp_path: Path) -> Iterator[ServiceFactory]:
    """Factory: ``service_process(bundle=None, CAPTION_X="1")`` -> ``python -m service``
    on the tiny bundle (or ``bundle``), ready (production warning filters, its own RSS)."""
    with contextlib.ExitStack() as stack:

        def start(bundle: Path | None = None, **env: str) -> ServiceProcess:
            log = tmp_path / f"service-{len(list(tmp_path.glob('service-*.log')))}.log"
            return stack.enter_context(run_process(bundle or tiny_bundle, log, env))

        yield start


def documented_errors() -> dict[str, int]:
    """Every error ``code`` the service documents (service/errors.py + the app's HTTP codes)."""
    codes = {
        cls.code: cls.status_code
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.CaptionError)
    }
    codes.update({code: status for status, code in HTTP_CODES.items()})
    codes["invalid_request"] = 422  # FastAPI request validation, rendered by the app
    return codes


def scrape(url: str) -> Snapshot:
    return parse(httpx.get(f"{url}/metrics", timeout=10).text)


def server_errors(url: str, *, allowed: frozenset[str] = frozenset()) -> dict[str, float]:
    """``caption_requests_total`` with a 5xx code not in ``allowed`` (must stay empty).

    ``/readyz`` answering 503 is its documented "not ready yet" (``wait_ready`` polls it while
    the model warms up), not a server error, so it is left out."""
    out: dict[str, float] = {}
    for (name, labels), value in scrape(url).samples.items():
        tags = dict(labels)
        if tags.get("endpoint") == "/readyz" and tags.get("code") == "503":
            continue
        if name == "caption_requests_total" and tags["code"].startswith("5"):
            if tags["code"] not in allowed and value:
                out[f"{tags['endpoint']} {tags['code']}"] = value
    return out


def assert_healthy(url: str, jpeg: bytes) -> None:
    """Probes answer and a real caption still comes back."""
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    r = httpx.post(
        f"{url}/caption", content=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert r.json()["caption"]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
