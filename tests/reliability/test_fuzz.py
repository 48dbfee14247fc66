"""Schemathesis fuzzing of the served OpenAPI schema against ``python -m service``.

Positive and negative cases generated from ``/openapi.json`` for every operation (multipart,
raw image, JSON url/base64 bodies, query options, the batch endpoint, the probes): never a 5xx
(except a 503/504 that the schema documents, which this server's load cannot produce), every
status documented for the operation, error bodies ``{"detail", "code"}`` with a documented
``code`` whose status matches, success bodies matching the response schema. At least
``MIN_CASES`` cases in all (counted), deterministic, without a hypothesis database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import schemathesis.specs.openapi.schemas  # noqa: F401  (import now, not inside a fixture:

# CPython 3.11 can raise "AST constructor recursion depth mismatch" when pytest rewrites
# schemathesis' lazily imported modules deep in a busy process)
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from tests.reliability.conftest import assert_healthy, documented_errors, server_errors
from tests.service.conftest import ServiceProcess, run_process

pytestmark = pytest.mark.e2e

MIN_CASES = 500
CALLS: Counter[str] = Counter()
DOCUMENTED = documented_errors()


@pytest.fixture(scope="module")
def fuzz_server(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    env = {
        "CAPTION_URL_CONNECT_TIMEOUT_S": "1",
        "CAPTION_URL_TOTAL_TIMEOUT_S": "2",
        "CAPTION_MAX_UPLOAD_BYTES": "1000000",
        "CAPTION_REQUEST_TIMEOUT_S": "30",
        "CAPTION_LOG_LEVEL": "warning",
    }
    with run_process(tiny_bundle, tmp_path_factory.mktemp("fuzz") / "service.log", env) as proc:
        yield proc


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServiceProcess) -> Any:
    loaded = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], database="none"
    )
    return loaded


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def documented_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx carries ``{"detail", "code"}`` with a documented code of that status."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"detail", "code"}, body
        assert DOCUMENTED.get(body["code"]) == response.status_code, body
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    documented_error_body,
]


POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
RUNS = {  # (operation, generation mode) -> examples; the probes have a single distinct case
    ("POST /caption", POSITIVE): 200,
    ("POST /caption", NEGATIVE): 150,
    ("POST /caption/batch", POSITIVE): 120,
    ("POST /caption/batch", NEGATIVE): 80,
    ("GET /healthz", POSITIVE): 3,
    ("GET /readyz", POSITIVE): 3,
    ("GET /metrics", POSITIVE): 3,
}


@pytest.mark.parametrize(("label", "mode"), list(RUNS), ids=[f"{o} {m.value}" for o, m in RUNS])
def test_openapi_fuzz(
    api_schema: Any,
    fuzz_server: ServiceProcess,
    session: requests.Session,
    label: str,
    mode: GenerationMode,
) -> None:
    # schemathesis' own pytest plugin (``from_fixture``) does not run on pytest 9: drive its
    # strategies with hypothesis directly
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} missing from /openapi.json"

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        max_examples=RUNS[label, mode],
        phases=[hypothesis.Phase.generate],  # no shrinking: a failure shows its own case
    )
    def run(case: Any) -> None:
        CALLS[label] += 1
        response = case.call(base_url=fuzz_server.url, session=session, timeout=30)
        case.validate_response(response, checks=CHECKS)

    run()


def test_fuzzing_ran_enough_cases_and_left_the_server_healthy(
    fuzz_server: ServiceProcess, jpeg: bytes
) -> None:
    """Runs after the fuzz cases of this module."""
    print("schemathesis cases", sum(CALLS.values()), dict(CALLS))
    assert sum(CALLS.values()) >= MIN_CASES, dict(CALLS)
    assert_healthy(fuzz_server.url, jpeg)
    assert server_errors(fuzz_server.url) == {}
    assert fuzz_server.process.poll() is None
