"""What captions the images of a bulk job: the in-process core, or a running service.

Both engines answer ``caption(data) -> Answer`` for encoded image bytes and raise
``service.errors.CaptionError`` subclasses (the API's codes) for images they refuse, so the job
turns every outcome into a row the same way whichever engine ran it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from batch.rows import ModelInfo, Options, ScoredCaption
from service.manifest import load_manifest
from service.options import OptionRules
from service.settings import Settings

if TYPE_CHECKING:
    from batch.endpoint import EndpointEngine
    from service.captioner import Captioner


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

    async def start(self) -> None:
        """Get ready to caption (load the model); the job calls it once, when it first needs it."""
        ...

    async def caption(self, data: bytes) -> Answer: ...

    async def close(self) -> None: ...


class InProcessEngine:
    """The ``Captioner`` core with its micro-batcher, on this machine's cores, no HTTP.

    The model and options are known from the bundle's manifest at once; the sessions open
    (and warm up) in ``start``, only when an input needs captioning: a rerun over a finished
    output loads no model."""

    def __init__(self, settings: Settings, raw_options: dict[str, object]) -> None:
        manifest = load_manifest(settings.bundle_dir)
        self._settings = settings
        self._options = OptionRules.for_bundle(settings, manifest).parse(raw_options)
        self.model = ModelInfo(name=manifest.name, version=manifest.version)
        self.options = Options(**self._options.as_dict())  # type: ignore[typeddict-item]
        # enough queued to fill every concurrent batch twice over, never more than the queue
        self.concurrency = min(
            settings.queue_size, 2 * settings.max_batch_size * settings.max_concurrent_batches
        )
        self._captioner: Captioner | None = None

    async def start(self) -> None:
        from service.captioner import Captioner  # onnxruntime only once a caption is due

        captioner = Captioner.load(self._settings)
        try:
            await captioner.start(beam_size=self._options.beam_size)
        except BaseException:
            await captioner.close()
            raise
        self._captioner = captioner

    async def caption(self, data: bytes) -> Answer:
        if self._captioner is None:
            raise RuntimeError("InProcessEngine.caption before start()")
        result = await self._captioner.caption(data, self._options)
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
        if self._captioner is not None:
            await self._captioner.close()


class RemoteEngine:
    """A running captioner service (``--endpoint``): retries, back-off and ``Retry-After``."""

    def __init__(self, client: EndpointEngine, options: Options, concurrency: int) -> None:
        self._client = client
        self.model = ModelInfo(name=client.model_name, version=client.model_version)
        self.options = options
        self.concurrency = 2 * concurrency  # the client holds the rest back: reads stay ahead

    async def start(self) -> None:
        """Nothing to load: ``connect`` already found the service ready."""

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
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # the service already judged the bytes; the size is informative only
        return None, None
    return width, height


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
