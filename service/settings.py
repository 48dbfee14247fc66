"""Every knob of the service, read from ``CAPTION_*`` environment variables (one class).

``Settings()`` reads the environment; tests build ``Settings(bundle_dir=..., port=0, ...)``.
Validators refuse combinations that cannot work (a queue smaller than a batch, a default beam
wider than the maximum) at start-up, so they never surface under load. The table of every
variable is docs/configuration.md (tests/test_docs.py keeps it equal to these fields); what the
batching and threading defaults were measured to give is in docs/benchmarks.md, History.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = Path("models/default")


def _default_bundle_dir() -> Path:
    """``models/default`` under the working directory if it exists there, else under the repo."""
    if (Path.cwd() / DEFAULT_BUNDLE).is_dir():
        return Path.cwd() / DEFAULT_BUNDLE
    return REPO_ROOT / DEFAULT_BUNDLE


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Service configuration; every field is also the env var ``CAPTION_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="CAPTION_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    # --- model ----
    bundle_dir: Path = Field(default_factory=_default_bundle_dir)
    """Model bundle folder (manifest.json, encoder.onnx, decoder.onnx, vocab.json). Default
    ``models/default`` in the working directory, else in the repository."""
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    """ONNX Runtime execution provider: ``auto`` takes CUDA when present, else CPU."""
    intra_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime intra-op threads per running batch; 0 = the cores the process may use,
    shared out among ``max_concurrent_batches`` (at least 1 each)."""
    inter_op_threads: int = Field(default=1, ge=1)
    """ONNX Runtime inter-op threads (the graphs run sequentially; 1 suits a small pod)."""
    use_int8: bool = False
    """Use the bundle's int8-quantised encoder when it has one."""
    warmup_batch_sizes: Annotated[tuple[int, ...], NoDecode] = (1, 2, 4, 8, 16)
    """Batch sizes run once at start-up before the service reports ready (comma-separated);
    sizes above ``max_batch_size`` are dropped."""

    # --- HTTP ----
    host: str = "127.0.0.1"
    """Listen address (``0.0.0.0`` in a container)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Listen port (0 = any free port)."""

    # --- batching ----
    max_batch_size: int = Field(default=16, ge=1, le=256)
    """Largest number of images run through the model together."""
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    """How long a batch stays open for more images after its first, while the model is busy with
    another batch. An idle model runs what is queued at once."""
    queue_size: int = Field(default=256, ge=1)
    """Images that may wait for the model; beyond it requests get 503 + Retry-After."""
    max_concurrent_batches: int = Field(default=2, ge=1, le=8)
    """Batches running on the model at the same time, each on its share of the cores. 2 keeps
    both cores of a small pod busy: with one batch the model stalls whenever HTTP or image
    decoding takes a core."""
    model_thread_nice: int = Field(default=10, ge=0, le=19)
    """How many nice levels below the process the threads running the model sit (Linux, per
    thread), so that the event loop (reading, refusing and answering requests) and image
    decoding preempt batch inference instead of queueing behind it: overload is refused fast.
    0 = same priority. Only the threads that run batches are lowered: with
    ``intra_op_threads`` > 1, ONNX Runtime's own pool threads keep the process's priority."""
    request_timeout_s: float = Field(default=10.0, gt=0)
    """Per-request deadline from arrival to answer; past it the answer is 504 and an image still
    queued is dropped before inference."""
    drain_timeout_s: float = Field(default=20.0, ge=0)
    """On SIGTERM: how long queued and running requests get to finish before the process exits."""
    retry_after_s: int = Field(default=1, ge=1)
    """``Retry-After`` seconds sent with 503 answers (overloaded, not ready)."""

    # --- inputs ----
    decode_threads: int = Field(default=2, ge=1, le=64)
    """Threads decoding and resizing images before they are queued (PIL releases the GIL)."""
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest encoded image accepted (upload, base64 payload or URL download): else 413."""
    max_batch_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest JSON body of ``POST /caption/batch``: else 413."""
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    """Largest decoded image (width x height), checked before decoding: else 413
    ``image_too_large`` (decompression bombs)."""
    batch_max_items: int = Field(default=32, ge=1)
    """Most images in one ``POST /caption/batch`` request: else 413 ``batch_too_large``."""

    # --- decoding options ----
    default_beam_size: int = Field(default=3, ge=1)
    """Beam width when the request does not say (1 = greedy)."""
    max_beam_size: int = Field(default=8, ge=1)
    """Widest beam a request may ask for."""
    default_max_length: int | None = Field(default=None, ge=2)
    """Caption length limit in tokens when the request does not say; default: the bundle's."""
    default_num_captions: int = Field(default=1, ge=1)
    """How many captions (n-best) a response lists when the request does not say."""
    length_penalty: float = Field(default=0.7, ge=0)
    """Beam-search length normalisation: score = log-probability / length ** length_penalty."""

    # --- response cache ----
    cache_size: int = Field(default=1024, ge=0)
    """Caption answers kept, keyed by the sha256 of the image, the model version and the options;
    identical requests in flight share one computation. 0 turns the cache off. An entry is the
    captions of one image (about 1 KB; tens of KB with attention maps), so the default bounds it
    to a few MB while absorbing retries and re-posted images."""

    # --- URL fetching ----
    url_allowlist: str = ""
    """Comma-separated host names, IP addresses or CIDRs that URL fetches may reach even when
    private or loopback (by default they are refused)."""
    url_connect_timeout_s: float = Field(default=3.0, gt=0)
    """TCP/TLS connect timeout of a URL fetch."""
    url_read_timeout_s: float = Field(default=5.0, gt=0)
    """Longest pause between two reads of a URL fetch."""
    url_total_timeout_s: float = Field(default=10.0, gt=0)
    """Whole URL fetch, redirects included (a server trickling bytes ends here)."""
    url_max_redirects: int = Field(default=3, ge=0, le=10)
    """Redirects followed, each re-validated."""
    url_fetch_concurrency: int = Field(default=8, ge=1)
    """URL downloads running at once across all requests."""

    # --- access control (service/security.py) ----
    api_keys: SecretStr = SecretStr("")
    """Comma-separated API keys; when set, requests must send ``Authorization: Bearer <key>`` or
    ``X-API-Key: <key>`` (else 401 ``unauthorized``). Empty (default): no authentication."""
    public_paths: str = "/healthz,/readyz,/metrics"
    """Comma-separated paths that need no API key and are not rate-limited (probes, scraping)."""
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    """Requests a second each client (API key, else IP address) may make on average; beyond it
    429 ``rate_limited`` with ``Retry-After``. 0 (default): no rate limit."""
    rate_limit_burst: int = Field(default=10, ge=1)
    """Requests a client may make at once before the per-second rate applies (bucket size)."""
    cors_origins: str = ""
    """Comma-separated web origins (``https://app.example.org``, or ``*``) whose pages may call
    the API from a browser. Empty (default): no CORS headers, same-origin only."""

    # --- logs ----
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the service and uvicorn."""
    log_json: bool = True
    """One JSON object per log line (else plain text)."""

    @field_validator("warmup_batch_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                return tuple(int(p) for p in parts)
            except ValueError as exc:
                raise ValueError(f"warmup_batch_sizes must be integers: {value!r}") from exc
        return value

    @field_validator("warmup_batch_sizes")
    @classmethod
    def _positive_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < 1 for size in value):
            raise ValueError("warmup batch sizes must be >= 1")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.queue_size < self.max_batch_size:
            raise ValueError(
                f"queue_size ({self.queue_size}) must be >= max_batch_size ({self.max_batch_size})"
            )
        if self.default_beam_size > self.max_beam_size:
            raise ValueError(
                f"default_beam_size ({self.default_beam_size}) > "
                f"max_beam_size ({self.max_beam_size})"
            )
        if self.default_num_captions > self.default_beam_size:
            raise ValueError(
                f"default_num_captions ({self.default_num_captions}) > default_beam_size "
                f"({self.default_beam_size}): n-best cannot exceed the beam"
            )
        if self.request_timeout_s * 1000 <= self.max_wait_ms:
            raise ValueError("request_timeout_s must be longer than max_wait_ms")
        if self.url_total_timeout_s < self.url_connect_timeout_s:
            raise ValueError("url_total_timeout_s must be >= url_connect_timeout_s")
        return self

    @property
    def warmup_sizes(self) -> list[int]:
        """Warm-up batch sizes that fit a batch, sorted, always including 1 and the maximum."""
        sizes = {s for s in self.warmup_batch_sizes if s <= self.max_batch_size}
        return sorted(sizes | {1, self.max_batch_size})

    @property
    def threads_per_batch(self) -> int:
        """ONNX Runtime intra-op threads for each session run: ``intra_op_threads``, or the
        process's cores divided among the batches that may run at once."""
        return self.intra_op_threads or max(1, available_cores() // self.max_concurrent_batches)

    @property
    def api_key_list(self) -> tuple[str, ...]:
        return _split(self.api_keys.get_secret_value())

    @property
    def public_path_list(self) -> tuple[str, ...]:
        return _split(self.public_paths)

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return _split(self.cors_origins)

    @property
    def allowlist(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.url_allowlist.split(",") if p.strip())


def _split(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())
