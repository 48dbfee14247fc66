"""The caption model: ONNX Runtime sessions over a bundle's encoder and step decoder.

``CaptionModel.load`` refuses a damaged bundle before building anything (schema, sha256 of every
file, vocabulary size, the sessions' input and output names against the manifest) and raises
``BundleError`` saying what is wrong. The sessions run sequentially with a fixed thread count and
thread spinning off, so idle workers do not burn the cores the HTTP server needs. Plain
``session.run`` is used: ``io_binding`` was no faster on CPU, since a decoder step's inputs change
every step (docs/benchmarks.md).

Kept in one module (about 310 lines): loading validates exactly what running relies on (names,
shapes, special tokens), so the checks sit next to the code that needs them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.decoding import DecodeRequest, StepOutput, decode_batch
from service.imaging import preprocess_file_bytes
from service.manifest import BundleError, Manifest, Preprocessing, load_manifest, verify_files
from service.settings import available_cores
from service.vocabulary import Vocabulary

Provider = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderUnavailable(RuntimeError):
    """An execution provider was asked for explicitly but ONNX Runtime cannot use it here."""


@dataclass(frozen=True)
class Caption:
    """One caption of one image, as the service returns it."""

    text: str
    score: float
    """Length-normalised log-probability (higher is better; 0 is certainty)."""
    tokens: tuple[int, ...]
    attention: list[list[float]] | None = None
    """Per word, the attention weights over the image grid (attention decoders only)."""


def session_options(intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or available_cores()
    options.inter_op_num_threads = max(1, inter_op_threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def provider_list(provider: Provider) -> list[str]:
    available = ort.get_available_providers()
    if provider == "cpu":
        return [CPU]
    if provider == "cuda":
        if CUDA not in available:
            raise ProviderUnavailable(
                f"provider 'cuda' requested but ONNX Runtime offers only {available} "
                "(install onnxruntime-gpu with a matching CUDA, or use provider 'auto'/'cpu')"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


def _session(path: Path, providers: list[str], options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise BundleError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def _check_names(
    what: str, session: ort.InferenceSession, inputs: Sequence[str], outputs: Sequence[str]
) -> None:
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing_in = [n for n in inputs if n not in have_in]
    missing_out = [n for n in outputs if n not in have_out]
    if missing_in or missing_out:
        raise BundleError(
            f"{what} does not match the manifest: missing inputs {missing_in} "
            f"(has {sorted(have_in)}), missing outputs {missing_out} (has {sorted(have_out)})"
        )


def _load_vocab(bundle_dir: Path, manifest: Manifest) -> Vocabulary:
    try:
        vocab = Vocabulary.load(bundle_dir / manifest.vocab_file)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bad vocabulary {manifest.vocab_file}: {exc}") from exc
    spec = manifest.decoder
    if len(vocab) != spec.vocab_size:
        raise BundleError(f"vocab.json has {len(vocab)} tokens, decoder expects {spec.vocab_size}")
    special = spec.special_tokens
    if (special.pad, special.start, special.end, special.unk) != (
        vocab.pad_id,
        vocab.start_id,
        vocab.end_id,
        vocab.unk_id,
    ):
        raise BundleError(f"special token ids {special} differ from the vocabulary's")
    return vocab


class CaptionModel:
    """A loaded bundle: ``encode`` images, then ``caption`` their features (batched)."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        vocab: Vocabulary,
        encoder: ort.InferenceSession,
        decoder: ort.InferenceSession,
        *,
        int8: bool = False,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.vocab = vocab
        self.int8 = int8
        self._encoder = encoder
        self._decoder = decoder
        self.provider: str = encoder.get_providers()[0]
        """The execution provider the sessions actually got (not just the one asked for)."""
        spec = manifest.decoder
        self._encoder_outputs = list(manifest.encoder.outputs.items())
        self._state_inputs = [s.input for s in spec.states]
        self._state_sizes = [s.size for s in spec.states]
        self._decoder_outputs = [spec.logprobs_output, *(s.output for s in spec.states)]
        if spec.attention_output:
            self._decoder_outputs.append(spec.attention_output)
        pre = manifest.encoder.preprocessing
        self.input_shape: tuple[int, int, int] = (
            (pre.height, pre.width, 3) if pre.layout == "NHWC" else (3, pre.height, pre.width)
        )
        """Shape of one normalised image, without the batch dimension."""

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        *,
        provider: Provider = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        use_int8: bool = False,
        verify: bool = True,
    ) -> CaptionModel:
        """Validate the bundle (schema, hashes, names) and open its ONNX Runtime sessions.

        ``intra_op_threads=0`` uses every core this process may run on. Raises ``BundleError``
        for a bundle that cannot be served, ``ProviderUnavailable`` for ``provider="cuda"``
        on a machine without a usable CUDA provider.
        """
        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir)
        if verify:
            verify_files(bundle_dir, manifest)
        vocab = _load_vocab(bundle_dir, manifest)
        enc_spec, dec_spec = manifest.encoder, manifest.decoder
        encoder_file = enc_spec.file
        if use_int8:
            if not enc_spec.int8_file:
                raise BundleError(f"bundle {bundle_dir} has no int8 encoder (use_int8 requested)")
            encoder_file = enc_spec.int8_file
        providers = provider_list(provider)
        options = session_options(intra_op_threads, inter_op_threads)
        encoder = _session(bundle_dir / encoder_file, providers, options)
        decoder = _session(bundle_dir / dec_spec.file, providers, options)
        _check_names(encoder_file, encoder, [enc_spec.input], list(enc_spec.outputs.values()))
        dec_outputs = [dec_spec.logprobs_output, *(s.output for s in dec_spec.states)]
        if dec_spec.attention_output:
            dec_outputs.append(dec_spec.attention_output)
        dec_inputs = [
            dec_spec.token_input,
            dec_spec.image_input,
            *(s.input for s in dec_spec.states),
        ]
        _check_names(dec_spec.file, decoder, dec_inputs, dec_outputs)
        model = cls(bundle_dir, manifest, vocab, encoder, decoder, int8=use_int8)
        if provider == "cuda" and model.provider != CUDA:
            raise ProviderUnavailable(f"provider 'cuda' requested, session got {model.provider}")
        return model

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.encoder.preprocessing

    @property
    def max_steps(self) -> int:
        """Most tokens one caption may generate (``<end>`` included)."""
        return self.manifest.decoder.max_length - 1

    def preprocess(self, data: bytes) -> NDArray[np.float32]:
        """Encoded image bytes -> one normalised encoder input (raises PIL errors on bad data)."""
        return preprocess_file_bytes(data, self.preprocessing)

    def request(
        self, *, beam_size: int = 1, num_captions: int = 1, length_penalty: float = 0.7
    ) -> DecodeRequest:
        """A ``DecodeRequest`` with this model's maximum caption length."""
        return DecodeRequest(
            beam_size=beam_size,
            max_length=self.max_steps,
            num_captions=num_captions,
            length_penalty=length_penalty,
        )

    def encode(self, images: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """A normalised batch (B, *input_shape) -> feature role -> features (B, ...)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"expected images (B, {self.input_shape}), got {images.shape}")
        feed = {self.manifest.encoder.input: np.ascontiguousarray(images, dtype=np.float32)}
        names = [name for _, name in self._encoder_outputs]
        values = self._encoder.run(names, feed)
        return {
            role: np.asarray(v) for (role, _), v in zip(self._encoder_outputs, values, strict=True)
        }

    def step(
        self,
        tokens: NDArray[np.int32],
        states: list[NDArray[np.float32]],
        image: NDArray[np.float32],
    ) -> StepOutput:
        """One decoder step for R rows (a ``service.decoding.StepFn``)."""
        spec = self.manifest.decoder
        feed: dict[str, Any] = {
            spec.token_input: np.ascontiguousarray(tokens, dtype=np.int32),
            spec.image_input: image,
        }
        for name, state in zip(self._state_inputs, states, strict=True):
            feed[name] = state
        values = self._decoder.run(self._decoder_outputs, feed)
        n_states = len(self._state_inputs)
        return StepOutput(
            logprobs=values[0],
            states=list(values[1 : 1 + n_states]),
            attention=values[1 + n_states] if spec.attention_output else None,
        )

    def caption(
        self, features: dict[str, NDArray[np.float32]], requests: Sequence[DecodeRequest]
    ) -> list[list[Caption]]:
        """Decode a batch of encoded images; per image its ``num_captions`` captions, best first.

        A request longer than the model's ``max_steps`` is refused (``ValueError``): the decoder
        was trained for that many steps, and callers validate options before they get here.
        """
        spec = self.manifest.decoder
        if any(r.max_length > self.max_steps for r in requests):
            raise ValueError(f"max_length is at most {self.max_steps} for this model")
        image = np.ascontiguousarray(features[spec.image_role], dtype=np.float32)
        results = decode_batch(
            self.step,
            image,
            self._state_sizes,
            requests,
            start_id=spec.special_tokens.start,
            end_id=spec.special_tokens.end,
        )
        return [
            [
                Caption(
                    text=self.vocab.decode(h.tokens),
                    score=h.score,
                    tokens=h.tokens,
                    attention=None if h.attention is None else h.attention.tolist(),
                )
                for h in hyps
            ]
            for hyps in results
        ]

    def caption_images(
        self, images: NDArray[np.float32], requests: Sequence[DecodeRequest]
    ) -> list[list[Caption]]:
        """``encode`` then ``caption``."""
        return self.caption(self.encode(images), requests)

    def warm_up(self, batch_sizes: Sequence[int], *, beam_size: int = 1) -> None:
        """Run each batch size once through both sessions (first runs allocate and plan).

        With ``beam_size`` > 1 the decoder also runs at ``size * beam_size`` rows, the widest
        batch a beam search of that size produces.
        """
        spec = self.manifest.decoder
        for size in batch_sizes:
            images = np.zeros((size, *self.input_shape), dtype=np.float32)
            features = self.encode(images)
            request = DecodeRequest(max_length=min(2, self.max_steps))
            self.caption(features, [request] * size)
            if beam_size > 1:
                rows = np.repeat(np.arange(size), beam_size)
                image = features[spec.image_role][rows]
                states = [np.zeros((len(rows), s), dtype=np.float32) for s in self._state_sizes]
                tokens = np.full(len(rows), spec.special_tokens.start, dtype=np.int32)
                self.step(tokens, states, image)
