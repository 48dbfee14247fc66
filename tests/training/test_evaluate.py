"""Scoring on hand-made captions and the evaluate command on the tiny bundle with real images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from training.data import load_captions, load_split
from training.evaluate import EvalOptions, build_parser, compare, evaluate, main, split_images
from training.scoring import (
    METRIC_KEYS,
    CaptionScorer,
    bootstrap_ci,
    is_valid_score,
    paired_bootstrap,
    ptb_tokenize,
    tokenize_pair,
)

REFERENCES = {
    "a.jpg": ["a dog runs on the grass", "a brown dog is running outside"],
    "b.jpg": ["a man rides a red bike down the street", "a cyclist on a city road"],
    "c.jpg": ["two children play in the water", "kids splash in a swimming pool"],
}


@pytest.fixture(scope="module")
def scorer() -> Iterator[CaptionScorer]:
    with CaptionScorer() as scorer:  # one METEOR JVM for the module
        yield scorer


def test_identical_captions_score_one(scorer: CaptionScorer) -> None:
    scores = scorer.score(REFERENCES, {k: v[0] for k, v in REFERENCES.items()})
    assert set(scores) == set(METRIC_KEYS)
    for key in ("bleu_1", "bleu_4", "nltk_bleu_4", "meteor", "rouge_l"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6), key
    assert scores["cider"] > 1.0


def test_worse_captions_score_lower_and_empty_ones_are_handled(scorer: CaptionScorer) -> None:
    good = scorer.score(REFERENCES, {"a.jpg": "a dog runs", "b.jpg": "a man rides a bike"})
    bad = scorer.score(REFERENCES, {"a.jpg": "", "b.jpg": "water"})
    for key in METRIC_KEYS:
        assert is_valid_score(key, good[key]) and is_valid_score(key, bad[key]), key
    for key in ("bleu_1", "meteor", "rouge_l", "cider"):
        assert good[key] > bad[key], key


def test_hypotheses_need_references() -> None:
    with pytest.raises(ValueError, match="without references"):
        tokenize_pair(REFERENCES, {"zzz.jpg": "a dog"})


def test_ptb_tokenizer_splits_punctuation_and_lowercases() -> None:
    tokens = ptb_tokenize({"x": ["A dog's ball, red.", ""], "y": ["T-shirt!"]})
    assert tokens == {"x": ["a dog 's ball red", ""], "y": ["t-shirt"]}


def test_bootstrap_interval_brackets_the_coco_bleu(flickr8k_dir: Path) -> None:
    """Human captions scored against the other four: the interval holds pycocoevalcap's BLEU-4."""
    captions = load_captions(flickr8k_dir)
    names = load_split(flickr8k_dir, "test")[:200]
    refs, hyps = tokenize_pair(
        {n: captions[n][1:] for n in names}, {n: captions[n][0] for n in names}
    )
    coco, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    interval = bootstrap_ci(refs, hyps, samples=500, seed=1)
    assert interval.value == pytest.approx(coco[3], abs=1e-9)
    assert interval.low < interval.value < interval.high
    assert 0.01 < interval.high - interval.low < 0.2
    again = bootstrap_ci(refs, hyps, samples=500, seed=1)
    assert (again.low, again.high) == (interval.low, interval.high)


def test_paired_bootstrap_tells_a_better_set_apart(flickr8k_dir: Path) -> None:
    captions = load_captions(flickr8k_dir)
    names = load_split(flickr8k_dir, "test")[:150]
    refs, human = tokenize_pair(
        {n: captions[n][1:] for n in names}, {n: captions[n][0] for n in names}
    )
    generic = {n: ["a man in a blue shirt is standing in front of a building"] for n in names}
    same = paired_bootstrap(refs, human, human, samples=300)
    assert same.difference == 0 and same.low == same.high == 0 and same.b_better == 0
    better = paired_bootstrap(refs, generic, human, samples=300)
    assert better.difference > 0 and better.low > 0 and better.b_better > 0.95
    assert better.a < better.b


def test_val_split_is_the_tail_of_train_and_disjoint_from_test(flickr8k_dir: Path) -> None:
    val = split_images(flickr8k_dir, "val", 500)
    train = load_split(flickr8k_dir, "train")
    assert val == train[-500:]
    assert not set(val) & set(split_images(flickr8k_dir, "test", 500))


def test_help_explains_every_flag() -> None:
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    for flag in ("--bundle", "--split", "--beam-size", "--length-penalty", "--limit", "--out"):
        assert flag in text


@pytest.fixture(scope="module")
def evaluation(
    tiny_bundle: Path, flickr8k_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("evaluate")
    argv = ["--bundle", str(tiny_bundle), "--data-dir", str(flickr8k_dir), "--split", "test"]
    argv += ["--limit", "8", "--beam-size", "2", "--batch-size", "3", "--out", str(out)]
    assert main(argv) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_evaluate_writes_captions_with_references(
    evaluation: tuple[Path, dict[str, Any]], flickr8k_dir: Path
) -> None:
    out, _ = evaluation
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == load_split(flickr8k_dir, "test")[:8]
    captions = load_captions(flickr8k_dir)
    for row in rows:
        assert row["caption"] and isinstance(row["score"], float)
        assert row["references"] == captions[row["image"]]


def test_evaluate_summary_has_every_metric_in_range(
    evaluation: tuple[Path, dict[str, Any]], tiny_bundle: Path
) -> None:
    _, summary = evaluation
    assert set(summary["metrics"]) == set(METRIC_KEYS)
    for key, value in summary["metrics"].items():
        assert is_valid_score(key, value), (key, value)
    assert summary["bundle"]["name"] == "tiny"
    assert summary["split"] == "test"
    assert summary["settings"]["beam_size"] == 2
    assert summary["settings"]["provider"] == "CPUExecutionProvider"
    assert summary["counts"]["images"] == 8
    assert summary["counts"]["references"] == 40
    assert summary["timing"]["images_per_s"] > 0
    ci = summary["bleu_4_ci"]
    assert 0 <= ci["low"] <= summary["metrics"]["bleu_4"] + 1e-12 <= ci["high"] + 2e-12


def test_evaluate_matches_the_served_model(
    evaluation: tuple[Path, dict[str, Any]], tiny_bundle: Path, flickr8k_dir: Path
) -> None:
    """The captions written are those CaptionModel gives for the same images one at a time."""
    from service.model import CaptionModel

    out, _ = evaluation
    model = CaptionModel.load(tiny_bundle)
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    for row in rows[:3]:
        image = model.preprocess((flickr8k_dir / "images" / row["image"]).read_bytes())
        [[caption]] = model.caption_images(np.stack([image]), [model.request(beam_size=2)])
        assert caption.text == row["caption"]


def test_evaluate_reports_a_bad_bundle_clearly(
    tmp_path: Path, flickr8k_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--bundle", str(tmp_path), "--data-dir", str(flickr8k_dir), "--limit", "2"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_evaluate_refuses_impossible_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--beam-size", "0"])
    assert exc.value.code == 2
    assert "--beam-size must be >= 1" in capsys.readouterr().err


def test_compare_scores_this_run_against_an_earlier_one(
    evaluation: tuple[Path, dict[str, Any]], flickr8k_dir: Path
) -> None:
    out, summary = evaluation
    assert summary["comparison"] is None
    references = load_captions(flickr8k_dir)
    names = load_split(flickr8k_dir, "test")[:8]
    _, human = tokenize_pair(references, {n: references[n][0] for n in names})
    result = compare(out / "captions.jsonl", references, human, samples=200)
    assert result is not None
    assert result.difference > 0 and result.this_better > 0.9
    with pytest.raises(ValueError, match="compare the same images"):
        compare(out / "captions.jsonl", references, {names[0]: human[names[0]]}, samples=10)


def test_evaluate_function_returns_what_the_command_writes(
    evaluation: tuple[Path, dict[str, Any]], tiny_bundle: Path, flickr8k_dir: Path
) -> None:
    """``evaluate`` (what export calls) gives the CLI's captions and summary layout, typed."""
    out, summary = evaluation
    result = evaluate(
        EvalOptions(
            bundle=tiny_bundle,
            data_dir=flickr8k_dir,
            beam_size=2,
            batch_size=3,
            limit=3,
            bootstrap=0,
        )
    )
    assert result.bleu_4_ci is None and result.comparison is None
    assert result.counts.images == 3 and result.settings.beam_size == 2
    assert set(result.metrics) == set(METRIC_KEYS)
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [c.caption for c in result.captions] == [r["caption"] for r in rows[:3]]
    written = result.summary()
    assert list(written) == list(summary)
    for key in ("bundle", "settings", "counts", "timing"):
        assert list(written[key]) == list(summary[key]), key
