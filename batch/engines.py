"""What captions the images of a bulk job: the in-process core, or a running service.

Both engines answer ``caption(data) -> Answer`` for encoded image bytes and raise
``service.errors.CaptionError`` subclasses (the API's codes) for images they refuse, so the job
turns every outcome into a row the same way whichever engine ran it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from batch.endpoint import EndpointEngine
from batch.rows import ModelInfo, Options, ScoredCaption
from service.captioner import Captioner
from service.options import CaptionOptions
from service.settings import Settings


@dataclass(frozen=True)
class Answer:
    captions: list[ScoredCaption]
    """Best first."""
    width: int | None
    height: int | None
    timings_ms: dict[str, float]


class Engine(Protocol):
    model: ModelInfo
    options: Options
    """The resolved decoding options every image of the job is captioned with."""
    concurrency: int
    """Images worth keeping in flight to keep the engine busy."""

    async def caption(self, data: bytes) -> Answer: ...

    async def close(self) -> None: ...


class InProcessEngine:
    """The ``Captioner`` core with its micro-batcher, on this machine's cores, no HTTP."""

    def __init__(self, captioner: Captioner, options: CaptionOptions) -> None:
        self.captioner = captioner
        self._options = options
        ref = captioner.model_ref
        self.model = ModelInfo(name=ref.name, version=ref.version)
        self.options = Options(**options.as_dict())  # type: ignore[typeddict-item]
        s = captioner.settings
        # enough queued to fill every concurrent batch twice over, never more than the queue
        self.concurrency = min(s.queue_size, 2 * s.max_batch_size * s.max_concurrent_batches)

    @classmethod
    async def start(cls, settings: Settings, raw_options: dict[str, object]) -> InProcessEngine:
        captioner = Captioner.load(settings)
        try:
            options = captioner.rules.parse(raw_options)
            await captioner.start()
        except BaseException:
            await captioner.close()
            raise
        return cls(captioner, options)

    async def caption(self, data: bytes) -> Answer:
        result = await self.captioner.caption(data, self._options)
        t = result.timings
        return Answer(
            captions=[ScoredCaption(text=c.text, score=round(c.score, 6)) for c in result.captions],
            width=result.width,
            height=result.height,
            timings_ms={
                "preprocess": _ms(t.preprocess_s),
                "queue": _ms(t.queue_s),
                "encode": _ms(t.encode_s),
                "decode": _ms(t.decode_s),
                "total": _ms(t.total_s),
            },
        )

    async def close(self) -> None:
        await self.captioner.close()


class RemoteEngine:
    """A running captioner service (``--endpoint``): retries, back-off and ``Retry-After``."""

    def __init__(self, client: EndpointEngine, options: Options, concurrency: int) -> None:
        self._client = client
        self.model = ModelInfo(name=client.model_name, version=client.model_version)
        self.options = options
        self.concurrency = 2 * concurrency  # the client holds the rest back: reads stay ahead

    async def caption(self, data: bytes) -> Answer:
        answer = await self._client.caption(
            data,
            beam_size=self.options["beam_size"],
            max_length=self.options["max_length"] or None,
            num_captions=self.options["num_captions"],
        )
        width, height = image_size(data)
        return Answer(
            captions=[ScoredCaption(text=t, score=s) for t, s in answer.captions],
            width=width,
            height=height,
            timings_ms={k: float(v) for k, v in answer.timings_ms.items()},
        )

    async def close(self) -> None:
        await self._client.aclose()


def image_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height from the image header (nothing decoded); None when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # the service already judged the bytes; the size is informative only
        return None, None
    return width, height


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
