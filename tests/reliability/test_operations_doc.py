"""docs/operations.md stays true: its error table is service/errors.py, its settings exist, its
alerts are the deployed rules."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.settings import Settings
from tests.reliability.conftest import documented_errors

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "operations.md").read_text()
ROW = re.compile(r"^\| (\d{3}) \| `([a-z0-9_]+)` \|", re.MULTILINE)


def test_error_table_matches_the_code() -> None:
    table = {code: int(status) for status, code in ROW.findall(DOC)}
    assert table == documented_errors()


def test_settings_named_in_the_doc_exist() -> None:
    named = set(re.findall(r"CAPTION_([A-Z_]+[A-Z])", DOC))
    fields = {name.upper() for name in Settings.model_fields}
    prefixes = {"URL"}  # "CAPTION_URL_CONNECT_TIMEOUT_S` / `_READ_TIMEOUT_S`" shorthand
    assert named - fields - prefixes == set()


def test_every_alert_has_a_runbook_entry() -> None:
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules/captioner-rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts and all(f"**`{alert}`**" in DOC for alert in alerts)
