"""Turn PromQL that lives outside rule files into a rules file, so `promtool check rules` parses it.

    python deploy/ci/exprs_to_rules.py OUT.yml

Sources: every Grafana panel target `expr` in deploy/grafana/dashboards/*.json (dashboard variables
substituted: `$__rate_interval` -> 5m, `$job` -> .*, ...) and the prometheus-adapter
`metricsQuery` templates in deploy/prometheus-adapter/values.yaml (`<<.Series>>` etc. filled in).
Each becomes a recording rule named after where it came from. Grafana has no linter offline; this
is how its queries are checked.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ADAPTER = DEPLOY / "prometheus-adapter" / "values.yaml"

GRAFANA_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "60000",
}
"""Grafana built-ins; dashboard variables with `allValue` get that value, others `.*`."""


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    values = dict(GRAFANA_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        values.setdefault(variable["name"], variable.get("allValue") or ".*")
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace `$name`, `${name}` and `[[name]]` Grafana variables; unknown names are an error."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"unknown Grafana variable {name!r} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every target of every panel, rows' nested panels included."""
    found = []
    for panel in dashboard.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner, target))
    return found


def grafana_rules() -> list[dict[str, str]]:
    rules = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        values = dashboard_variables(dashboard)
        for panel, target in panel_targets(dashboard):
            rules.append(
                {
                    "record": f"grafana:{path.stem}:panel{panel['id']}_{target['refId']}",
                    "expr": substitute(target["expr"], values),
                }
            )
    return rules


def adapter_rules() -> list[dict[str, str]]:
    values = yaml.safe_load(ADAPTER.read_text())
    rules = []
    for i, rule in enumerate(values["rules"]["custom"]):
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
        if series is None:
            raise ValueError(f"cannot read the metric name of seriesQuery {rule['seriesQuery']!r}")
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series.group(1))
            .replace("<<.LabelMatchers>>", 'namespace="ml",pod=~"captioner-.*"')
            .replace("<<.GroupBy>>", "namespace, pod")
        )
        if "<<" in query:
            raise ValueError(f"unfilled adapter template in {query!r}")
        rules.append({"record": f"adapter:rule{i}:{rule['name']['as']}", "expr": query})
    return rules


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    groups = [
        {"name": "grafana-panels", "rules": grafana_rules()},
        {"name": "prometheus-adapter", "rules": adapter_rules()},
    ]
    Path(argv[0]).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=200))
    print(f"{argv[0]}: {sum(len(g['rules']) for g in groups)} expressions as rules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
