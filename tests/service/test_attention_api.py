"""``attention=true`` over real HTTP: per-word attention maps from an attention bundle, absent
otherwise, and a clear 400 from a model without attention."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.manifest import load_manifest
from tests.service.conftest import RunningServer, run_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def attention_server(tiny_attention_bundle: Path) -> Iterator[RunningServer]:
    with run_server(tiny_attention_bundle, request_timeout_s=20.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(attention_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=attention_server.url, timeout=30) as c:
        yield c


def _check_maps(body: dict[str, object], cells: int) -> None:
    grid = body["attention_grid"]
    assert isinstance(grid, list) and int(np.prod(grid)) == cells
    captions = body["captions"]
    assert isinstance(captions, list) and captions
    for caption in captions:
        words = caption["words"]
        assert words == caption["text"].split() and words, caption
        weights = np.asarray(caption["attention"])
        assert weights.shape == (len(words), cells)
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-3)


def test_query_flag_returns_one_map_per_word(
    client: httpx.Client, jpeg: bytes, tiny_attention_bundle: Path
) -> None:
    cells = load_manifest(tiny_attention_bundle).encoder.grid_size
    assert cells is not None
    response = client.post(
        "/caption?attention=true", content=jpeg, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    _check_maps(response.json(), cells)


def test_json_flag_with_beam_search(
    client: httpx.Client, jpeg: bytes, tiny_attention_bundle: Path
) -> None:
    cells = load_manifest(tiny_attention_bundle).encoder.grid_size
    assert cells is not None
    body = {
        "image_base64": base64.b64encode(jpeg).decode(),
        "attention": True,
        "beam_size": 3,
        "num_captions": 2,
    }
    response = client.post("/caption", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["captions"]) == 2
    _check_maps(response.json(), cells)


@pytest.mark.parametrize("query", ["", "?attention=false", "?attention=0"])
def test_maps_are_absent_unless_asked(client: httpx.Client, jpeg: bytes, query: str) -> None:
    response = client.post(f"/caption{query}", content=jpeg, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "attention_grid" not in body
    assert all(set(c) == {"text", "score"} for c in body["captions"])


def test_a_bad_flag_is_invalid_option(client: httpx.Client, jpeg: bytes) -> None:
    response = client.post(
        "/caption?attention=maybe", content=jpeg, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_option"


def test_a_model_without_attention_refuses_the_flag(tiny_bundle: Path, jpeg: bytes) -> None:
    with run_server(tiny_bundle, request_timeout_s=20.0) as server:
        response = httpx.post(
            f"{server.url}/caption?attention=true",
            content=jpeg,
            headers={"content-type": "image/jpeg"},
            timeout=30,
        )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_option" and "attention" in body["detail"]
