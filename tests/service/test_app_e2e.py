"""The service over real HTTP: uvicorn on 127.0.0.1 serving the tiny ONNX bundle."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.model import CaptionModel
from tests.polling import wait_until, wait_until_async
from tests.service import images
from tests.service.conftest import RunningServer, run_process, run_server, wait_ready

pytestmark = pytest.mark.e2e

TIMING_KEYS = {"queue", "preprocess", "encode", "decode", "total"}


@pytest.fixture(scope="module")
def client(served: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


def assert_caption_response(body: dict[str, object], *, n: int = 1) -> None:
    assert isinstance(body["caption"], str) and body["caption"]
    captions = body["captions"]
    assert isinstance(captions, list) and len(captions) == n
    assert captions[0]["text"] == body["caption"]
    scores = [c["score"] for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert body["model"] == {"name": "tiny", "version": "0.0.1"}
    timings = body["timings_ms"]
    assert isinstance(timings, dict) and set(timings) == TIMING_KEYS
    assert all(v >= 0 for v in timings.values())
    assert isinstance(body["request_id"], str) and body["request_id"]


# --- every input form ----
def test_multipart_upload(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/caption", files={"image": ("dog.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert_caption_response(r.json())
    assert r.headers["x-request-id"] == r.json()["request_id"]


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_raw_body(client: httpx.Client, jpeg: bytes, content_type: str) -> None:
    r = client.post("/caption", content=jpeg, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    assert_caption_response(r.json())


@pytest.mark.parametrize("prefix", ["", "data:image/jpeg;base64,"])
def test_json_base64(client: httpx.Client, jpeg: bytes, prefix: str) -> None:
    payload = {"image_base64": prefix + base64.b64encode(jpeg).decode()}
    r = client.post("/caption", json=payload)
    assert r.status_code == 200, r.text
    assert_caption_response(r.json())


def test_same_image_same_caption_in_every_form(client: httpx.Client, jpeg: bytes) -> None:
    raw = client.post("/caption", content=jpeg, headers={"Content-Type": "image/jpeg"}).json()
    form = client.post("/caption", files={"image": ("x.jpg", jpeg, "image/jpeg")}).json()
    b64 = client.post("/caption", json={"image_base64": base64.b64encode(jpeg).decode()}).json()
    assert raw["captions"] == form["captions"] == b64["captions"]


@pytest.fixture(scope="module")
def image_server(jpeg: bytes) -> Iterator[str]:
    """A local HTTP server with one JPEG at /dog.jpg."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(jpeg)))
            self.end_headers()
            self.wfile.write(jpeg)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dog.jpg"
    server.shutdown()
    server.server_close()


def test_json_url_allowlisted(
    start_server: Callable[..., RunningServer], image_server: str, jpeg: bytes
) -> None:
    running = start_server(url_allowlist="127.0.0.1")
    r = httpx.post(f"{running.url}/caption", json={"url": image_server}, timeout=30)
    assert r.status_code == 200, r.text
    assert_caption_response(r.json())
    raw = httpx.post(
        f"{running.url}/caption", content=jpeg, headers={"Content-Type": "image/jpeg"}
    ).json()
    assert r.json()["captions"] == raw["captions"]
    assert running.sample("caption_url_fetch_duration_seconds_count") == 1


def test_url_to_loopback_refused_by_default(client: httpx.Client, image_server: str) -> None:
    r = client.post("/caption", json={"url": image_server})
    assert r.status_code == 403
    assert r.json()["code"] == "url_forbidden"


# --- options ----
def test_options_from_query_and_json(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post(
        "/caption?beam_size=4&num_captions=3",
        content=jpeg,
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    assert_caption_response(r.json(), n=3)
    texts = [c["text"] for c in r.json()["captions"]]
    assert len(set(texts)) == 3
    payload = {"image_base64": base64.b64encode(jpeg).decode(), "beam_size": 1, "max_length": 3}
    greedy = client.post("/caption", json=payload).json()
    assert len(greedy["caption"].split()) <= 3


@pytest.mark.parametrize(
    "query",
    [
        "beam_size=0",
        "beam_size=99",
        "beam_size=wide",
        "num_captions=4&beam_size=3",
        "num_captions=0",
        "max_length=0",
        "max_length=10000",
    ],
)
def test_invalid_options(client: httpx.Client, jpeg: bytes, query: str) -> None:
    r = client.post(f"/caption?{query}", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_option"
    assert r.json()["detail"]


def test_request_id_echoed_or_replaced(client: httpx.Client, jpeg: bytes) -> None:
    headers = {"Content-Type": "image/jpeg", "X-Request-ID": "abc-123"}
    r = client.post("/caption", content=jpeg, headers=headers)
    assert r.headers["x-request-id"] == "abc-123" == r.json()["request_id"]
    r = client.post(
        "/caption", content=jpeg, headers={**headers, "X-Request-ID": "bad id\twith spaces"}
    )
    assert r.headers["x-request-id"] != "bad id\twith spaces"
    assert r.json()["request_id"] == r.headers["x-request-id"]


# --- bad and unusual inputs ----
GOOD_ODD = {
    "1x1 PNG": (images.png_1x1, "image/png"),
    "CMYK JPEG": (images.cmyk_jpeg, "image/jpeg"),
    "16-bit PNG": (images.png_16bit, "image/png"),
    "RGBA PNG": (images.rgba_png, "image/png"),
    "animated GIF": (images.animated_gif, "image/gif"),
}


@pytest.mark.parametrize("name", list(GOOD_ODD))
def test_unusual_images_are_captioned(client: httpx.Client, name: str) -> None:
    make, content_type = GOOD_ODD[name]
    r = client.post("/caption", content=make(), headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    assert_caption_response(r.json())


def _bad_inputs(jpeg: bytes) -> dict[str, tuple[dict[str, object], int, str]]:
    b64 = base64.b64encode(jpeg).decode()
    raw = "image/jpeg"
    return {
        "truncated JPEG": ({"content": jpeg[: len(jpeg) // 2], "ct": raw}, 422, "invalid_image"),
        "zero bytes": ({"content": b"", "ct": raw}, 422, "empty_body"),
        "text as image": ({"content": b"hello, not an image", "ct": raw}, 422, "invalid_image"),
        "bomb header": (
            {"content": images.png_bomb_header(), "ct": "image/png"},
            413,
            "image_too_large",
        ),
        "wrong content type": (
            {"content": jpeg, "ct": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        "no content type": ({"content": jpeg, "ct": None}, 415, "unsupported_media_type"),
        "invalid base64": ({"json": {"image_base64": "@@not base64@@"}}, 400, "invalid_base64"),
        "base64 of nothing": ({"json": {"image_base64": ""}}, 422, "empty_body"),
        "JSON not an object": ({"json": [1, 2]}, 400, "invalid_json"),
        "malformed JSON": ({"content": b"{nope", "ct": "application/json"}, 400, "invalid_json"),
        "JSON without image": ({"json": {"beam_size": 2}}, 400, "missing_image"),
        "both url and base64": (
            {"json": {"url": "http://x", "image_base64": b64}},
            400,
            "invalid_json",
        ),
        "unknown JSON field": ({"json": {"image_base64": b64, "colour": 1}}, 400, "invalid_json"),
        "bool option": ({"json": {"image_base64": b64, "beam_size": True}}, 400, "invalid_option"),
        "multipart without image": (
            {"files": {"photo": ("a.jpg", jpeg, raw)}},
            400,
            "missing_image",
        ),
        "multipart empty image": ({"files": {"image": ("a.jpg", b"", raw)}}, 422, "empty_body"),
    }


BAD_NAMES = list(_bad_inputs(b"x"))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_gets_a_clear_4xx(client: httpx.Client, jpeg: bytes, name: str) -> None:
    spec, status, code = _bad_inputs(jpeg)[name]
    if "json" in spec:
        r = client.post("/caption", json=spec["json"])
    elif "files" in spec:
        r = client.post("/caption", files=spec["files"])  # type: ignore[arg-type]
    else:
        headers = {} if spec["ct"] is None else {"Content-Type": str(spec["ct"])}
        assert isinstance(spec["content"], bytes)
        r = client.post("/caption", content=spec["content"], headers=headers)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert set(r.json()) == {"detail", "code"} and r.json()["detail"]


def test_upload_limit_enforced_while_streaming(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(max_upload_bytes=100_000)
    big = images.encode(images.noise_rgb(400, 400), "PNG")
    assert len(big) > 100_000
    declared = httpx.post(
        f"{running.url}/caption", content=big, headers={"Content-Type": "image/png"}
    )
    assert (declared.status_code, declared.json()["code"]) == (413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit bites while reading
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = httpx.post(
        f"{running.url}/caption", content=chunks(), headers={"Content-Type": "image/png"}
    )
    assert (streamed.status_code, streamed.json()["code"]) == (413, "payload_too_large")
    form = httpx.post(f"{running.url}/caption", files={"image": ("b.png", big, "image/png")})
    assert (form.status_code, form.json()["code"]) == (413, "payload_too_large")
    assert running.sample("caption_rejected_total", {"reason": "too_large"}) == 3


def test_unknown_route_and_method(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = client.get("/caption")
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")


# --- batch endpoint ----
def test_batch_mixes_results_and_errors_in_order(client: httpx.Client, jpeg: bytes) -> None:
    b64 = base64.b64encode(jpeg).decode()
    items = [
        {"image_base64": b64},
        {"image_base64": "%%%"},
        {"image_base64": base64.b64encode(b"not an image").decode()},
        {"nothing": 1},
        {"url": "http://127.0.0.1:1/x.jpg"},
        {"image_base64": base64.b64encode(images.png_1x1()).decode()},
    ]
    r = client.post("/caption/batch", json={"images": items, "beam_size": 2, "num_captions": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(items)
    assert_caption_response(results[0], n=2)
    assert_caption_response(results[5], n=2)
    expected = [
        (400, "invalid_base64"),
        (422, "invalid_image"),
        (400, "missing_image"),
        (403, "url_forbidden"),
    ]
    for result, (status, code) in zip(results[1:5], expected, strict=True):
        assert result["status"] == status and result["error"]["code"] == code
        assert result["error"]["detail"]


def test_batch_limits(client: httpx.Client, served: RunningServer) -> None:
    too_many = [{"image_base64": "AAAA"}] * (served.settings.batch_max_items + 1)
    r = client.post("/caption/batch", json={"images": too_many})
    assert (r.status_code, r.json()["code"]) == (413, "batch_too_large")
    r = client.post("/caption/batch", json={"images": []})
    assert (r.status_code, r.json()["code"]) == (400, "missing_image")
    r = client.post("/caption/batch", content=b"x", headers={"Content-Type": "image/jpeg"})
    assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")


# --- batching, overload, deadlines ----
async def _fire(url: str, payloads: list[bytes], query: str = "") -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        return await asyncio.gather(
            *(
                c.post(f"/caption{query}", content=p, headers={"Content-Type": "image/png"})
                for p in payloads
            )
        )


def test_concurrent_requests_are_batched(start_server: Callable[..., RunningServer]) -> None:
    running = start_server(max_batch_size=16, max_concurrent_batches=1)
    payloads = [images.encode(images.noise_rgb(64, 64, seed=i), "PNG") for i in range(48)]
    responses = asyncio.run(_fire(running.url, payloads, "?beam_size=8&num_captions=1"))
    assert [r.status_code for r in responses] == [200] * 48
    batches = running.sample("caption_batch_size_count")
    images_run = running.sample("caption_batch_size_sum")
    assert images_run == 48 + 0  # every image ran exactly once
    assert batches < 48, "no two requests ever shared a batch"
    assert running.sample("caption_batch_size_bucket", {"le": "1.0"}) < batches


def _thread_nice_values() -> dict[int, int]:
    """Nice value of every thread of this process (Linux ``/proc/self/task/*/stat``)."""
    found = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(task.name)] = int(fields[16])  # field 19 of stat; [0] is field 3
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_model_threads_run_below_the_event_loop(
    start_server: Callable[..., RunningServer], jpeg: bytes
) -> None:
    """The threads that run batches sit CAPTION_MODEL_THREAD_NICE levels below the process, so
    the event loop answers (and refuses) requests while a batch computes."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    before = set(_thread_nice_values())
    running = start_server(model_thread_nice=7, max_concurrent_batches=2)
    r = httpx.post(f"{running.url}/caption", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200
    new = {tid: nice for tid, nice in _thread_nice_values().items() if tid not in before}
    lowered = [tid for tid, nice in new.items() if nice == min(19, base + 7)]
    assert lowered, f"no model thread at nice {base + 7}: {new}"
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    assert sorted(set(new.values())) == sorted({base, min(19, base + 7)}), new


def test_overload_gets_503_with_retry_after(start_server: Callable[..., RunningServer]) -> None:
    running = start_server(max_batch_size=1, queue_size=1, decode_threads=4)
    payloads = [images.encode(images.noise_rgb(32, 32, seed=i), "PNG") for i in range(40)]
    responses = asyncio.run(_fire(running.url, payloads, "?beam_size=8&max_length=11"))
    codes = {r.status_code for r in responses}
    assert codes <= {200, 503} and 200 in codes and 503 in codes, codes
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.json()["code"] == "overloaded" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert running.sample("caption_rejected_total", {"reason": "queue_full"}) == len(refused)


def test_deadline_gives_504(start_server: Callable[..., RunningServer]) -> None:
    running = start_server(request_timeout_s=0.02)
    slow = images.encode(Image.new("RGB", (2000, 2000), (9, 99, 199)), "PNG")  # ~0.2 s to decode
    r = httpx.post(
        f"{running.url}/caption", content=slow, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert (r.status_code, r.json()["code"]) == (504, "deadline_exceeded")
    assert running.sample("caption_rejected_total", {"reason": "timeout"}) >= 1


def test_client_disconnect_is_cancelled_and_the_server_carries_on(
    start_server: Callable[..., RunningServer], jpeg: bytes
) -> None:
    running = start_server(decode_threads=1)
    slow = images.encode(Image.new("RGB", (2000, 2000), (9, 99, 199)), "PNG")

    async def leave_early() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(running.url.rsplit(":")[-1])
        )
        head = "POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        head += f"Content-Length: {len(slow)}\r\n\r\n"
        writer.write(head.encode() + slow)
        await writer.drain()
        await wait_until_async(  # the server holds the image (its decode takes ~0.2 s): hang up
            lambda: running.sample("caption_pending_requests") >= 1, what="the request admitted"
        )
        writer.close()
        await writer.wait_closed()

    asyncio.run(leave_early())
    wait_until(
        lambda: running.sample("caption_rejected_total", {"reason": "cancelled"}) >= 1,
        what="the disconnect noticed",
    )
    assert running.sample("caption_pending_requests") == 0
    r = httpx.post(f"{running.url}/caption", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200
    assert running.sample("caption_requests_total", {"endpoint": "/caption", "code": "499"}) == 1


# --- operations ----
def test_health_readiness_docs_and_page(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["provider"] == "CPUExecutionProvider"
    assert ready.json()["model"] == {"name": "tiny", "version": "0.0.1"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/caption", "/caption/batch", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


class HeldWarmUp(CaptionModel):
    """The real model whose warm-up waits for the test to let it finish."""

    release = threading.Event()

    def warm_up(self, batch_sizes: Sequence[int], *, beam_size: int = 1) -> None:
        assert self.release.wait(30)
        super().warm_up(batch_sizes, beam_size=beam_size)


def test_not_ready_until_warmed_up(tiny_bundle: Path, jpeg: bytes) -> None:
    model = CaptionModel.load(tiny_bundle)
    model.__class__ = HeldWarmUp
    with run_server(tiny_bundle, model=model, wait=False) as running:
        ready = httpx.get(f"{running.url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "starting"
        assert httpx.get(f"{running.url}/healthz").status_code == 200
        r = httpx.post(
            f"{running.url}/caption", content=jpeg, headers={"Content-Type": "image/jpeg"}
        )
        assert (r.status_code, r.json()["code"]) == (503, "not_ready")
        assert "retry-after" in r.headers
        assert running.sample("caption_ready") == 0
        HeldWarmUp.release.set()
        wait_ready(running.url)
        assert running.sample("caption_ready") == 1


def test_bad_bundle_exits_nonzero_with_the_reason(tmp_path: Path, tiny_bundle: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_bundle.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "decoder.onnx").write_bytes(b"tampered")
    with run_process(broken, tmp_path / "log.txt", ready=False) as proc:
        assert proc.process.wait(timeout=60) == 2
        assert "decoder.onnx" in proc.log() and "cannot serve bundle" in proc.log()


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"CAPTION_QUEUE_SIZE": "2"}, "queue_size"),
        ({"CAPTION_URL_ALLOWLIST": "10.0.0.0/33"}, "10.0.0.0/33"),
    ],
)
def test_bad_settings_exit_nonzero_with_the_reason(
    tmp_path: Path, tiny_bundle: Path, env: dict[str, str], reason: str
) -> None:
    with run_process(tiny_bundle, tmp_path / "log.txt", env, ready=False) as proc:
        assert proc.process.wait(timeout=60) == 2
        assert "invalid CAPTION_* settings" in proc.log() and reason in proc.log()


def test_sigterm_drains_in_flight_requests(tmp_path: Path, tiny_bundle: Path) -> None:
    env = {"CAPTION_DECODE_THREADS": "1", "CAPTION_DRAIN_TIMEOUT_S": "30"}
    with run_process(tiny_bundle, tmp_path / "log.txt", env) as proc:
        slow = images.encode(images.noise_rgb(1200, 1200), "PNG")

        async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=proc.url, timeout=60) as c:
                inflight = [
                    asyncio.create_task(
                        c.post("/caption", content=slow, headers={"Content-Type": "image/png"})
                    )
                    for _ in range(6)
                ]

                async def all_accepted() -> bool:
                    text = (await c.get("/metrics")).text
                    line = next(x for x in text.splitlines() if x.startswith("caption_pending_"))
                    return float(line.split()[-1]) >= 6

                await wait_until_async(all_accepted, what="6 requests pending", timeout=30)
                proc.process.send_signal(signal.SIGTERM)

                async def not_ready() -> httpx.Response | None:
                    r = await c.get("/readyz")
                    return None if r.status_code == 200 else r

                ready = await wait_until_async(not_ready, what="/readyz after SIGTERM")
                refused = await c.post(
                    "/caption", content=slow, headers={"Content-Type": "image/png"}
                )
                return await asyncio.gather(*inflight), ready, refused

        done, ready, refused = asyncio.run(scenario())
        assert [r.status_code for r in done] == [200] * 6
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert (refused.status_code, refused.json()["code"]) == (503, "not_ready")
        assert proc.process.wait(timeout=30) == 0
        log = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
        messages = [entry["message"] for entry in log]
        assert "draining" in messages and "drained" in messages
        access = [e for e in log if e["message"] == "request" and e["path"] == "/caption"]
        assert all("request_id" in e and "status" in e for e in access)


def test_requests_are_logged_as_json(
    start_server: Callable[..., RunningServer], jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_server()
    with caplog.at_level("INFO", logger="service.access"):
        httpx.post(
            f"{running.url}/caption",
            content=jpeg,
            headers={"Content-Type": "image/jpeg", "X-Request-ID": "trace-1"},
        )
        records = wait_until(  # written once the response has gone out
            lambda: [r for r in caplog.records if r.name == "service.access"],
            what="the access log record",
        )
    assert records and records[-1].request_id == "trace-1"  # type: ignore[attr-defined]
    assert records[-1].status == 200  # type: ignore[attr-defined]
    assert set(records[-1].timings_ms) == TIMING_KEYS  # type: ignore[attr-defined]
