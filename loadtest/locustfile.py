"""Locust scenario for teams that already use locust (``pip install -e '.[bench]'``).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --users 20 --spawn-rate 5 --run-time 2m --headless

Each simulated user sends POST /caption with images from ``LOADTEST_IMAGES`` (default: the
shared Flickr8k test images) as ``LOADTEST_PAYLOAD`` (``upload`` | ``raw`` | ``base64``), paced
at ``LOADTEST_RATE_PER_USER`` requests per second (default 1), so N users offer about N req/s.

Locust users form a *closed* model: a user waits for its answer before the next request, so when
the service slows down the offered load drops with it and queueing is hidden. For latency under
a fixed arrival rate, measured from the scheduled send, use ``python -m loadtest run --mode open``.
A 503 (overloaded, with Retry-After) is reported as a failure named ``503 overloaded``.
"""

from __future__ import annotations

import os
from pathlib import Path

from locust import HttpUser, constant_throughput, task

from loadtest.payloads import PayloadPool, find_images

_IMAGES = os.environ.get("LOADTEST_IMAGES")
_POOL = PayloadPool.from_images(
    find_images(Path(_IMAGES) if _IMAGES else None, limit=200),
    os.environ.get("LOADTEST_PAYLOAD", "upload"),
)


class CaptionUser(HttpUser):
    wait_time = constant_throughput(float(os.environ.get("LOADTEST_RATE_PER_USER", "1")))

    @task
    def caption(self) -> None:
        request = _POOL.next()
        with self.client.post(
            "/caption",
            data=request.content,
            headers=request.headers,
            name="POST /caption",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                if "caption" in response.json():
                    response.success()
                else:
                    response.failure("200 without a caption")
            elif response.status_code == 503:
                response.failure("503 overloaded")
            else:
                try:
                    code = response.json().get("code")
                except ValueError:
                    code = None
                response.failure(f"{response.status_code} {code}")
