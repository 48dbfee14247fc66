"""The response cache over HTTP: repeats and identical uploads in flight never reach the model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.service import images
from tests.service.conftest import RunningServer

pytestmark = pytest.mark.e2e


def upload(seed: int) -> bytes:
    return images.encode(images.noise_rgb(32, 32, seed=seed), "PNG")


def images_run(running: RunningServer) -> float:
    """Images the model has encoded so far (the sum of every batch's size)."""
    return running.sample("caption_batch_size_sum")


def post(client: httpx.Client, data: bytes) -> dict[str, object]:
    response = client.post("/caption", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_a_repeat_is_answered_from_the_cache(start_server: Callable[..., RunningServer]) -> None:
    running = start_server(cache_size=8)
    with httpx.Client(base_url=running.url, timeout=30) as client:
        first = post(client, upload(1))
        before = images_run(running)
        again = post(client, upload(1))
        other_options = client.post(
            "/caption?beam_size=1", content=upload(1), headers={"Content-Type": "image/png"}
        )
    assert images_run(running) == before + 1  # only the other options reached the model
    assert other_options.status_code == 200
    assert again["captions"] == first["captions"]
    assert again["timings_ms"]["cached"] is True  # type: ignore[index]
    assert "cached" not in first["timings_ms"]  # type: ignore[operator]
    assert running.sample("caption_cache_hits_total") == 1
    assert running.sample("caption_cache_misses_total") == 2


def test_sixteen_identical_uploads_in_flight_run_the_model_once(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(cache_size=8, request_timeout_s=30.0)
    data = upload(2)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/caption", content=data, headers={"Content-Type": "image/png"})
                    for _ in range(16)
                )
            )

    before = images_run(running)
    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [200] * 16
    assert len({str(a.json()["captions"]) for a in answers}) == 1
    assert images_run(running) == before + 1
    assert running.sample("caption_cache_misses_total") == 1
    assert running.sample("caption_cache_hits_total") == 15


def test_the_least_recently_used_answer_is_evicted(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(cache_size=2)
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for seed in (3, 4, 5):  # the third evicts the first
            post(client, upload(seed))
        before = images_run(running)
        post(client, upload(5))  # still cached
        assert images_run(running) == before
        post(client, upload(3))  # evicted: computed again
        assert images_run(running) == before + 1


def test_cache_size_zero_turns_the_cache_off(start_server: Callable[..., RunningServer]) -> None:
    running = start_server(cache_size=0)
    with httpx.Client(base_url=running.url, timeout=30) as client:
        before = images_run(running)
        answers = [post(client, upload(6)) for _ in range(2)]
    assert images_run(running) == before + 2
    assert all("cached" not in a["timings_ms"] for a in answers)  # type: ignore[operator]
    assert running.sample("caption_cache_hits_total") == 0
    assert running.sample("caption_cache_misses_total") == 0
