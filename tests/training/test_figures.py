"""Model-card figures from an evaluation's captions.jsonl and a run's history.json."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from training.figures import main, pick_evenly


def test_pick_evenly_spreads_over_the_file() -> None:
    rows = [{"i": i} for i in range(100)]
    assert [r["i"] for r in pick_evenly(rows, 4)] == [0, 25, 50, 75]
    assert pick_evenly(rows[:3], 12) == rows[:3]


def test_grid_and_curves_are_written(flickr8k_dir: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in (flickr8k_dir / "images").glob("*.jpg"))[:5]
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        "".join(
            json.dumps({"image": n, "caption": "a dog runs", "references": ["a dog", "a cat"]})
            + "\n"
            for n in names
        )
    )
    run = tmp_path / "run"
    run.mkdir()
    epochs = [{"epoch": e, "ce": 3.0 - e / 10, "val_ce": 3.1 - e / 20} for e in (1, 2, 3)]
    history = {"epochs": epochs, "best_epoch": 3, "best_val_ce": 2.95}
    (run / "history.json").write_text(json.dumps(history))
    grid, curves = tmp_path / "grid.png", tmp_path / "curves.png"
    argv = ["--captions", str(captions), "--grid-out", str(grid), "--count", "4"]
    argv += ["--runs", str(run), "--curves-out", str(curves), "--data-dir", str(flickr8k_dir)]
    assert main(argv) == 0
    with Image.open(grid) as img:
        assert img.width > img.height > 200
    with Image.open(curves) as img:
        assert img.width > 300
