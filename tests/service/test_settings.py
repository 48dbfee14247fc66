"""Settings come from CAPTION_* variables and refuse impossible combinations."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAPTION_BUNDLE_DIR", str(tmp_path))
    monkeypatch.setenv("CAPTION_PORT", "9001")
    monkeypatch.setenv("CAPTION_WARMUP_BATCH_SIZES", "1, 4,64")
    monkeypatch.setenv("CAPTION_URL_ALLOWLIST", "127.0.0.1, 10.0.0.0/8,images.local")
    monkeypatch.setenv("CAPTION_LOG_JSON", "false")
    s = Settings()
    assert (s.bundle_dir, s.port, s.log_json) == (tmp_path, 9001, False)
    assert s.warmup_sizes == [1, 4, 16]  # capped at max_batch_size, which is always warmed
    assert s.allowlist == ("127.0.0.1", "10.0.0.0/8", "images.local")


def test_defaults_suit_a_small_pod() -> None:
    s = Settings()
    assert s.bundle_dir.parts[-2:] == ("models", "default")
    assert (s.host, s.port, s.provider) == ("127.0.0.1", 8000, "auto")
    assert (s.intra_op_threads, s.inter_op_threads, s.max_batch_size) == (0, 1, 16)
    assert (s.batch_max_items, s.max_upload_bytes, s.url_max_redirects) == (32, 10 * 2**20, 3)


@pytest.mark.parametrize(
    "values",
    [
        {"queue_size": 4, "max_batch_size": 8},
        {"default_beam_size": 9, "max_beam_size": 8},
        {"default_num_captions": 4, "default_beam_size": 3},
        {"request_timeout_s": 0.001, "max_wait_ms": 5},
        {"url_total_timeout_s": 1, "url_connect_timeout_s": 3},
        {"provider": "tpu"},
        {"max_batch_size": 0},
        {"warmup_batch_sizes": "1,x"},
    ],
)
def test_impossible_settings_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)  # type: ignore[arg-type]


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no docstring"


def test_configuration_doc_lists_every_setting() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [n for n in Settings.model_fields if f"`CAPTION_{n.upper()}`" not in doc]
    assert not missing, f"docs/configuration.md settings table lacks {missing}"


def test_each_concurrent_batch_gets_its_share_of_the_cores() -> None:
    from service.settings import available_cores

    cores = available_cores()
    assert Settings().threads_per_batch == max(1, cores // 2)  # 2 concurrent batches
    assert Settings(max_concurrent_batches=1).threads_per_batch == cores
    assert Settings(max_concurrent_batches=8).threads_per_batch == max(1, cores // 8)
    assert Settings(intra_op_threads=3).threads_per_batch == 3  # an explicit count wins
