"""``loadtest`` drives and measures the service; it imports no model code (``training``), which
needs the train extra: the naive baseline runs as ``python -m training.baseline`` instead."""

from __future__ import annotations

import ast
from pathlib import Path

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_loadtest_imports_nothing_from_training() -> None:
    files = sorted(LOADTEST.glob("*.py"))
    assert len(files) > 10
    offenders = {
        f"{path.name}: {name}"
        for path in files
        for name in _imported_modules(path)
        if name == "training" or name.startswith("training.")
    }
    assert not offenders


def test_the_check_sees_imports_at_any_depth(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import training.model\n    from training import x\n")
    assert _imported_modules(sample) == ["training.model", "training"]
