"""Decoding options of one caption request, validated in exactly one place: ``OptionRules.parse``.

Every front door (HTTP routes, the bulk command, a Ray actor) turns what its caller sent into a
``CaptionOptions`` through the rules of the loaded model and the settings; code past the parser
trusts the value it gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.decoding import DecodeRequest
from service.errors import InvalidOption

if TYPE_CHECKING:
    from service.manifest import Manifest
    from service.settings import Settings

OPTION_NAMES = ("beam_size", "max_length", "num_captions", "attention")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


@dataclass(frozen=True)
class CaptionOptions:
    """How to caption one image: the decoder's request and what the answer includes."""

    decode: DecodeRequest
    attention: bool = False
    """Return each word's attention weights over the image grid (attention decoders only)."""

    @property
    def beam_size(self) -> int:
        return self.decode.beam_size

    @property
    def max_length(self) -> int:
        return self.decode.max_length

    @property
    def num_captions(self) -> int:
        return self.decode.num_captions

    def as_dict(self) -> dict[str, int]:
        """The options that change a caption (bulk rows and cache keys are keyed by them)."""
        return {
            "beam_size": self.beam_size,
            "max_length": self.max_length,
            "num_captions": self.num_captions,
        }


@dataclass(frozen=True)
class OptionRules:
    """Defaults and limits from the settings and the loaded model."""

    default_beam_size: int
    max_beam_size: int
    default_max_length: int
    max_max_length: int
    default_num_captions: int
    length_penalty: float
    attention_maps: bool
    """The model's decoder returns attention weights (``attention=true`` is allowed)."""
    model_label: str = "the model"

    @classmethod
    def for_bundle(cls, settings: Settings, manifest: Manifest) -> OptionRules:
        """The options a bundle allows under ``settings`` (known before its sessions open)."""
        max_steps = manifest.decoder.max_length - 1
        return cls(
            default_beam_size=settings.default_beam_size,
            max_beam_size=settings.max_beam_size,
            default_max_length=min(settings.default_max_length or max_steps, max_steps),
            max_max_length=max_steps,
            default_num_captions=settings.default_num_captions,
            length_penalty=settings.length_penalty,
            attention_maps=manifest.decoder.attention_output is not None,
            model_label=f"model {manifest.name!r} ({manifest.decoder.architecture})",
        )

    def parse(self, *sources: Mapping[str, Any]) -> CaptionOptions:
        """Options named in ``sources`` (later sources win), validated; raises ``InvalidOption``."""
        raw: dict[str, object] = {}
        for source in sources:
            for name in OPTION_NAMES:
                if name in source and source[name] is not None:
                    raw[name] = source[name]
        beam = _as_int("beam_size", raw.get("beam_size", self.default_beam_size))
        if not 1 <= beam <= self.max_beam_size:
            raise InvalidOption(f"beam_size must be between 1 and {self.max_beam_size}, got {beam}")
        length = _as_int("max_length", raw.get("max_length", self.default_max_length))
        if not 1 <= length <= self.max_max_length:
            raise InvalidOption(
                f"max_length must be between 1 and {self.max_max_length}, got {length}"
            )
        default_n = min(self.default_num_captions, beam)
        count = _as_int("num_captions", raw.get("num_captions", default_n))
        if not 1 <= count <= beam:
            raise InvalidOption(
                f"num_captions must be between 1 and beam_size ({beam}), got {count}"
            )
        attention = _as_bool("attention", raw.get("attention", False))
        if attention and not self.attention_maps:
            raise InvalidOption(
                f"attention=true needs an attention decoder; {self.model_label} has none"
            )
        request = DecodeRequest(
            beam_size=beam,
            max_length=length,
            num_captions=count,
            length_penalty=self.length_penalty,
        )
        return CaptionOptions(decode=request, attention=attention)


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise InvalidOption(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidOption(f"{name} must be an integer, got {value!r}")


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidOption(f"{name} must be true or false, got {value!r}")
