"""The HTTP-free core: ``Captioner`` captions bytes and URLs without FastAPI or Starlette."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.captioner import Captioner, ImageUrl
from service.errors import InvalidOption, UnprocessableImage, UrlForbidden
from service.settings import Settings
from tests.conftest import REPO_ROOT

NO_WEB_STACK = """
import asyncio, json, sys
from pathlib import Path
from service.captioner import Captioner
from service.settings import Settings

async def main() -> str:
    async with Captioner.load(Settings(bundle_dir=Path(sys.argv[1]))) as captioner:
        result = await captioner.caption(Path(sys.argv[2]).read_bytes(), captioner.options())
    return result.caption

caption = asyncio.run(main())
print(json.dumps({"caption": caption, "web": sorted(
    m for m in sys.modules if m.split(".")[0] in ("fastapi", "starlette", "uvicorn"))}))
"""


def test_captioning_through_the_core_imports_no_web_stack(jpeg_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_WEB_STACK, str(REPO_ROOT / "models/default"), str(jpeg_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["caption"].split()
    assert report["web"] == []


@pytest.fixture
def settings(tiny_bundle: Path) -> Settings:
    return Settings(bundle_dir=tiny_bundle, warmup_batch_sizes=(1,), max_batch_size=4)


async def test_a_caption_carries_size_hash_model_and_timings(settings: Settings) -> None:
    from tests.service import images

    data = images.encode(images.noise_rgb(40, 30), "PNG")
    async with Captioner.load(settings) as captioner:
        options = captioner.options(beam_size=3, num_captions=2)
        result = await captioner.caption(data, options)
        again = await captioner.caption(data, options)
    assert len(result.captions) == 2 and result.caption == result.captions[0].text
    assert (result.width, result.height) == (40, 30)
    assert result.model.name == "tiny" and len(result.sha256) == 64
    assert not result.timings.cached and result.timings.total_s > 0
    assert again.timings.cached and again.timings.encode_s == 0  # answered from the cache
    assert [c.text for c in again.captions] == [c.text for c in result.captions]


async def test_options_are_validated_once_by_the_rules(settings: Settings) -> None:
    captioner = Captioner.load(settings)
    try:
        with pytest.raises(InvalidOption, match="beam_size"):
            captioner.options(beam_size=99)
        with pytest.raises(InvalidOption, match="attention"):
            captioner.options(attention=True)  # the tiny bundle has no attention decoder
        assert captioner.options(beam_size="2").beam_size == 2
    finally:
        await captioner.close()


async def test_bad_bytes_and_forbidden_urls_raise_the_api_errors(settings: Settings) -> None:
    async with Captioner.load(settings) as captioner:
        with pytest.raises(UnprocessableImage):
            await captioner.caption(b"not an image", captioner.options())
        with pytest.raises(UrlForbidden):
            await captioner.caption(ImageUrl("http://127.0.0.1:9/x.jpg"), captioner.options())


async def test_a_passed_deadline_is_504_and_the_core_keeps_serving(settings: Settings) -> None:
    from service.errors import DeadlineExceeded
    from tests.service import images

    data = images.encode(images.noise_rgb(8, 8), "PNG")
    async with Captioner.load(settings) as captioner:
        past = asyncio.get_running_loop().time() - 1.0
        with pytest.raises(DeadlineExceeded):
            await captioner.caption(data, captioner.options(), deadline=past)
        assert (await captioner.caption(data, captioner.options())).caption is not None
