"""The docs stay true: docs/configuration.md's tables equal the code, README.md stays a front door,
and no relative link in README.md or docs/*.md points at nothing.

The tables are written by hand, so a new setting, metric or error code fails here until it is
documented.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from pydantic import SecretStr

from service import errors
from service.metrics import Metrics
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


def table(doc: Path, heading: str) -> list[list[str]]:
    """Body rows of the first table under ``## heading``, each a list of stripped cells."""
    section = doc.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) > 2, f"{doc.name}: no table under '## {heading}'"
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[2:]]


def unquote(cell: str) -> str:
    """The text of a cell that is one code span (`x` -> x)."""
    assert re.fullmatch(r"`[^`]+`", cell), f"expected one code span, got {cell!r}"
    return cell[1:-1]


# --- docs/configuration.md ------------------------------------------------------------------


def env_default(name: str) -> str | None:
    """A field's default written as its environment variable would be; None: no value."""
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if value is None:
        return None
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        base = REPO if value.is_relative_to(REPO) else Path.cwd()
        return value.relative_to(base).as_posix()
    return str(value)


def test_settings_table_is_settings() -> None:
    rows = table(CONFIGURATION, "Settings")
    documented = [unquote(row[0]) for row in rows]
    assert sorted(documented) == sorted(f"CAPTION_{n.upper()}" for n in Settings.model_fields)
    for variable, default, meaning in rows:
        name = variable.strip("`").removeprefix("CAPTION_").lower()
        expected = env_default(name)
        if expected is None:  # no value: a description in parentheses
            assert re.fullmatch(r"\([^`]+\)", default), f"{variable}: default {default!r}"
        elif expected == "":
            assert default == "(empty)", f"{variable}: default {default!r}, expected (empty)"
        else:
            assert default == f"`{expected}`", f"{variable}: default {default!r} != {expected!r}"
        assert meaning, f"{variable} has no meaning"


def test_metrics_table_is_what_metrics_registers() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    wrappers = {m._name: m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    registered: dict[str, tuple[str, str]] = {}
    for family in registry.collect():
        labels = ",".join(wrappers[family.name]._labelnames)
        name = family.name + ("_total" if family.type == "counter" else "")
        registered[name + (f"{{{labels}}}" if labels else "")] = (family.type, family.name)
    assert set(wrappers) == {family for _, family in registered.values()}

    rows = table(CONFIGURATION, "Metrics")
    documented = {unquote(row[0]): row[1] for row in rows}
    assert len(documented) == len(rows), "a metric is listed twice"
    assert documented == {name: kind for name, (kind, _) in registered.items()}
    assert all(row[2] for row in rows), "a metric has no meaning"


def caption_errors(cls: type[errors.CaptionError]) -> list[type[errors.CaptionError]]:
    """``cls`` and every subclass under it, however deep, that the service's errors module
    defines (the bulk command's own codes are documented in docs/bulk.md)."""
    found = [cls] + [sub for child in cls.__subclasses__() for sub in caption_errors(child)]
    return [c for c in found if c.__module__ == errors.__name__]


def test_rejection_reasons_are_documented() -> None:
    """Every ``reason`` label an error class counts under is named in the metrics table."""
    row = next(r for r in table(CONFIGURATION, "Metrics") if r[0].startswith("`caption_rejected"))
    named = set(re.findall(r"`([a-z_]+)`", row[2]))
    reasons = {cls.reason for cls in caption_errors(errors.CaptionError) if cls.reason}
    assert reasons and reasons <= named, f"undocumented reasons: {reasons - named}"


def test_error_table_is_the_error_tree() -> None:
    rows = table(CONFIGURATION, "Error codes")
    documented = sorted((int(row[0]), unquote(row[1])) for row in rows)
    tree = sorted((cls.status_code, cls.code) for cls in caption_errors(errors.CaptionError))
    assert documented == tree
    assert all(row[2] for row in rows), "an error code has no meaning"


# --- README.md ----------------------------------------------------------------------------


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move detail into docs/"
    assert lines[:6] == [
        "# captioner",
        "",
        "```bash",
        "make serve   # fresh machine: installs (no TensorFlow) and serves models/default on "
        "http://127.0.0.1:8000",
        "make test    # fresh machine: installs everything (serving, training, dev tools; Java, "
        "Chromium, promtool via apt, as root) and runs the test suite",
        "```",
    ]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)


# --- links --------------------------------------------------------------------------------


def slugs(doc: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (a repeated heading gets ``-1``, ...)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", doc.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        repeat = counts.get(slug, 0)
        counts[slug] = repeat + 1
        found.add(slug if repeat == 0 else f"{slug}-{repeat}")
    return found


def test_relative_links_resolve() -> None:
    broken = []
    for doc in DOCS:
        text = CODE_SPAN.sub("", FENCE.sub("", doc.read_text()))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in slugs(linked):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
