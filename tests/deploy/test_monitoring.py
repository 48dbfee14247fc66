"""Prometheus rules, Grafana dashboard, prometheus-adapter rule and compose wiring agree with the
metrics the service really exports (service.metrics) and with each other."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from tests.deploy.conftest import CHART, REPO_ROOT

pytestmark = pytest.mark.deploy


def _load_exprs_to_rules() -> Any:
    """deploy/ci/exprs_to_rules.py is a script, not a package module: load it by path."""
    path = REPO_ROOT / "deploy" / "ci" / "exprs_to_rules.py"
    spec = importlib.util.spec_from_file_location("exprs_to_rules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


exprs_to_rules = _load_exprs_to_rules()

DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "captioner-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "captioner.json"
ADAPTER = DEPLOY / "prometheus-adapter" / "values.yaml"
PROMQL_FUNCTIONS = {
    "sum", "avg", "max", "min", "rate", "increase", "histogram_quantile", "by", "without", "or",
    "and", "unless", "avg_over_time", "max_over_time", "le", "on", "ignoring", "absent", "count",
}  # fmt: skip


def exported_names() -> set[str]:
    """Sample names the service's registry exposes (histogram/counter suffixes included)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (not functions, labels or keywords)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {n for n in names if n not in PROMQL_FUNCTIONS and not n.startswith("caption:")}


def rule_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_service_exports_every_promised_metric() -> None:
    promised = {
        "caption_requests_total", "caption_request_duration_seconds_bucket", "caption_queue_depth",
        "caption_inflight_requests", "caption_pending_requests",
        "caption_queue_wait_seconds_bucket",
        "caption_batch_size_bucket", "caption_batch_size_sum", "caption_batch_size_count",
        "caption_inference_duration_seconds_bucket", "caption_rejected_total",
        "caption_url_fetch_duration_seconds_bucket", "caption_model_info", "caption_ready",
    }  # fmt: skip
    assert promised <= exported_names()


def test_rules_and_dashboard_only_use_metrics_the_service_exports() -> None:
    known = exported_names() | {"up"}
    exprs = [r["expr"] for g in rule_file()["groups"] for r in g["rules"]]
    exprs += [t["expr"] for _, t in exprs_to_rules.panel_targets(dashboard())]
    unknown = {name for expr in exprs for name in metric_names(expr)} - known
    assert not unknown, f"metrics used but not exported by service.metrics: {unknown}"


def test_recording_rules_cover_quantiles_and_mean_batch_size() -> None:
    records = {
        r["record"]: r["expr"] for g in rule_file()["groups"] for r in g["rules"] if "record" in r
    }
    for q in ("p50", "p95", "p99"):
        assert "histogram_quantile" in records[f"caption:request_duration_seconds:{q}_5m"]
    mean = records["caption:batch_size:mean_5m"]
    assert "caption_batch_size_sum" in mean and "caption_batch_size_count" in mean


def test_alerts_cover_errors_latency_saturation_and_readiness() -> None:
    alerts = {r["alert"]: r for g in rule_file()["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) == {
        "CaptionerHighErrorRate",
        "CaptionerLatencySLOBreach",
        "CaptionerQueueSaturated",
        "CaptionerNoReadyReplicas",
    }
    for alert in alerts.values():
        assert alert["for"] and alert["labels"]["severity"] in {"page", "ticket"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert 'reason="queue_full"' in alerts["CaptionerQueueSaturated"]["expr"]


def test_dashboard_has_the_panels_operators_ask_for() -> None:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    by_title = {p["title"]: p for p in panels}
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels}
    latency = by_title["Latency p50 / p95 / p99"]
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]
    assert by_title["Batch size distribution"]["type"] == "heatmap"
    assert "caption_batch_size_bucket" in exprs["Batch size distribution"]
    assert "caption_queue_depth" in exprs["Queue depth, in flight, pending"]
    assert "by (code)" in exprs["Errors by code"]
    assert "caption_rejected_total" in exprs["Rejections by reason"]
    assert "caption_requests_total" in exprs["Request rate by endpoint and code"]
    for panel in panels:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_become_valid_rule_text(tmp_path: Path) -> None:
    out = tmp_path / "exprs.yml"
    assert exprs_to_rules.main([str(out)]) == 0
    groups = yaml.safe_load(out.read_text())["groups"]
    grafana = next(g for g in groups if g["name"] == "grafana-panels")["rules"]
    assert len(grafana) == len(exprs_to_rules.panel_targets(dashboard()))
    for rule in grafana:
        assert "$" not in rule["expr"] and "[[" not in rule["expr"], rule
    adapter = next(g for g in groups if g["name"] == "prometheus-adapter")["rules"]
    assert adapter and all("<<" not in r["expr"] for r in adapter)


def test_unknown_dashboard_variable_is_an_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        exprs_to_rules.substitute('rate(x{a=~"$nope"}[5m])', {"a": "b"})


def test_adapter_exposes_the_metric_the_hpa_reads() -> None:
    adapter = yaml.safe_load(ADAPTER.read_text())
    (rule,) = adapter["rules"]["custom"]
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    metric = chart_values["autoscaling"]["pendingRequests"]["metricName"]
    assert rule["name"]["as"] == metric
    assert rule["seriesQuery"].startswith(metric)
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert metric in exported_names()


def test_compose_prometheus_scrapes_the_service_and_loads_the_rules() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"captioner", "prometheus", "grafana"} <= set(services)
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "captioner")
    assert job["static_configs"][0]["targets"] == ["captioner:8000"]
    assert services["captioner"]["ports"] == ["${CAPTION_HOST_PORT:-8000}:8000"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    grafana_mounts = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana_mounts
    assert services["captioner"]["read_only"] is True


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    mounts = dict(
        v.rsplit(":", 2)[:2] for v in compose["services"]["grafana"]["volumes"] if ":" in v
    )
    grafana = DEPLOY / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((grafana / "dashboards" / "captioner.yml").read_text())[
        "providers"
    ]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    (source,) = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["type"] == "datasource" and variable["query"] == source["type"]
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
