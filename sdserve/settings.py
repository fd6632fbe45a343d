"""All of sdserve's settings, read once at start from SDSERVE_* variables and CLI flags."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import limits
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sdserve.storage.location import parse_s3_url

OutputFormat = Literal["url", "base64"]


DEFAULT_MAX_BATCH = {"cpu": 4, "gpu": 8}
"""Images per pipeline call when `max_batch` is not set, by kind of device (bench/batching.py)."""


def device_kind(device: str) -> Literal["cpu", "gpu"]:
    """Whether a device setting means a CPU or a GPU, without loading torch (the API process
    never does): `auto` is a GPU where NVIDIA's driver is loaded (a CPU-only torch there falls
    back to the CPU, with the GPU's defaults)."""
    if device == "auto":
        return "gpu" if Path("/proc/driver/nvidia/version").exists() else "cpu"
    return "cpu" if device == "cpu" else "gpu"


def default_workers(device: str) -> int:
    """Workers of `serve` by default: one per GPU process; on a CPU two (where it has two cores
    or more), which share the cores: one alone uses them all, two busy take half each
    (worker/cores.py), the most images per second measured (bench/README.md, batching.py)."""
    if device_kind(device) == "gpu":
        return 1
    return min(2, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Server settings; frozen once read so nothing changes them behind a running server."""

    model_config = SettingsConfigDict(env_prefix="SDSERVE_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    """Address the HTTP API (or `sdserve worker`'s metrics) listens on."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port of the HTTP API (0 picks a free one)."""
    data_dir: Path = Path("sdserve-data")
    """Folder for the job database and images (default ./sdserve-data)."""
    database: str | None = None
    """`postgresql://...` to share jobs between machines (default: SQLite in the data dir)."""
    storage: str | None = None
    """`s3://bucket[/prefix]?endpoint_url=...&region=...` for images (default: the data dir)."""
    queues: Annotated[list[str], NoDecode] = []
    """Models whose jobs this node's workers take (default: every configured model)."""
    cpu_threads: int | None = Field(default=None, ge=1)
    """torch threads per CPU worker (default: the cores shared evenly between workers)."""
    models_file: Path | None = None
    """TOML file of models (`[models.NAME]` tables with source, aliases, max_size, config)."""
    model: Annotated[list[str], NoDecode] = []
    """`SOURCE` (the default model) or `NAME=SOURCE`; repeatable, comma-separated in env."""
    api_keys: Annotated[list[str], NoDecode] = []
    """Accepted API keys (SDSERVE_API_KEYS is comma-separated); none = open, loopback only."""
    device: str = "auto"
    """Device the workers run on: auto, cpu, cuda or cuda:N."""
    workers: int = Field(
        default_factory=lambda data: default_workers(data.get("device", "auto")), ge=0, le=64
    )
    """Worker processes started by `serve` (default: `default_workers`)."""
    model_memory_gb: float | None = Field(default=None, gt=0)
    """GiB of model weights a worker keeps loaded on its device; beyond it the least recently
    used model is unloaded (default: all the device's memory, a GPU's or the machine's RAM)."""
    result_ttl_s: float = Field(default=1800.0, gt=0)
    """Seconds a finished job and its images are kept (default 30 minutes)."""
    output_format: OutputFormat = "url"
    """`url`: output images as signed, expiring URLs; `base64`: inline PNG base64."""
    public_url: str | None = None
    """Base URL clients reach this server at, used in image URLs (default http://host:port)."""
    secret_key: str | None = None
    """Key signing image URLs (default: generated once and kept in the data directory)."""
    max_attempts: int = Field(default=3, ge=1)
    """Runs a job gets when its worker process dies under it before it is FAILED."""
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds without a worker heartbeat before its running job goes back to the queue."""
    max_queue: int = Field(default=1000, ge=1)
    """Queued jobs per endpoint beyond which /run answers 429."""
    max_queued_per_key: int = Field(default=100, ge=1)
    """Queued jobs one API key may have, across endpoints, beyond which its submits answer
    429: no key can fill a queue others share."""
    rate_limit: str = "100/second;3000/minute"
    """Requests per API key (`limits` notation, `;`-separated; `none` for no limit), counted
    over every authenticated call; beyond it the call answers 429 with Retry-After. An open
    server (no keys, loopback only) has one user and no limit."""
    rate_limit_storage: str = "memory://"
    """Where request counts are kept: `memory://` (this API process), or `redis://host:port`
    so the limit holds across every API node of a cluster."""
    idempotency_ttl_s: float = Field(default=86400.0, gt=0)
    """Seconds an Idempotency-Key keeps naming the job it made (24 h)."""
    webhook_retry_s: Annotated[list[float], NoDecode] = [5, 30, 120, 600, 1800, 3600]
    """Seconds before each retry of a failed webhook (comma-separated in env); after the last,
    its value repeats until the horizon. Each wait varies by up to 20% (jitter)."""
    webhook_horizon_s: float = Field(default=86400.0, gt=0)
    """Seconds after the event that a webhook is retried; then it is kept as failed (24 h)."""
    webhook_secret: str | None = None
    """`whsec_...` key signing webhooks (Standard Webhooks); default: generated once and kept in
    the data directory. Every API node of a cluster needs the same one."""
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds one webhook delivery may take."""
    fetch_timeout_s: float = Field(default=15.0, gt=0)
    """Seconds allowed to download an init_image or mask URL."""
    fetch_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    """Largest init_image or mask download accepted, in bytes."""
    allow_url_networks: Annotated[list[str], NoDecode] = []
    """CIDRs (`10.0.0.0/8`, `::1`) and host names that image URLs and webhooks may reach
    although they are not public; comma-separated in env (default: none, public only)."""
    max_prompt_chars: int = Field(default=4000, ge=1)
    """Longest prompt or negative prompt accepted, in characters (4000: far past what a text
    encoder reads, short enough that parsing it costs nothing)."""
    compel_everywhere: bool = False
    """Parse every dialect's prompts with compel's weighting syntax (DeepInfra asks per request)."""
    image_processes: int = Field(default=2, ge=1, le=64)
    """Processes per API process that decode and resize input images, at a lower CPU priority;
    more images at once wait their turn (each may take a few hundred MB while decoded)."""
    lora_dir: Path | None = None
    """Folder of LoRA `.safetensors` files, named by file stem (default <data-dir>/loras)."""
    enhance_prompt_suffix: str = ""
    """Appended to ModelsLab prompts sent with `enhance_prompt: "yes"` (default: nothing)."""
    modelslab_wait_s: float = Field(default=30.0, ge=0, le=300)
    """Seconds a ModelsLab generation call waits for its images before answering `processing`."""
    nsfw_check: bool = True
    """Run the safety check on every image (the model's own checker, else NudeNet)."""
    batch_images: bool = True
    """A request's images in one batched pipeline call (each reproduces alone with its seed to
    within a level of 255; inpainting always one call per image); off, one call per image,
    bit-exact."""
    preview_every: int = Field(default=5, ge=0, le=1000)
    """A running job's preview (engine/previews.py) is made every this many denoising steps,
    for the readers of its event stream; 0: no previews."""
    max_batch: int | None = Field(default=None, ge=1, le=64)
    """Images a worker makes in one pipeline call from queued jobs that share model, size,
    steps, sampler, guidance, LoRA and image count (plain text-to-image); 1 runs each job
    alone (default: chosen per device by measurement, see `max_batch_for`)."""
    batch_wait_ms: float = Field(default=0.0, ge=0, le=10_000)
    """Milliseconds a worker waits for more jobs to fill a batch after taking the first
    (default 0: it batches only what is already queued, so no job waits for company)."""
    compile: bool = False
    """torch.compile every model's denoiser and VAE decoder (a model's `compile` in models.toml
    turns it on for that model alone); the default model compiles at worker start."""
    channels_last: bool = False
    """Channels-last weights for every model's UNet and VAE (or per model in models.toml)."""
    fuse_qkv: bool = False
    """Fused QKV attention projections for every model that offers them (or per model)."""
    sweep_interval_s: float = Field(default=5.0, gt=0)
    """Seconds between sweeps for expired jobs and timed-out runs."""
    metrics_public: bool = False
    """Serve /metrics without an API key although keys are set (default: a key is needed;
    a server without keys listens on loopback only)."""
    log_format: Literal["text", "json"] = "text"
    """`text` lines, or one JSON object per line (for log collectors)."""
    access_log: bool = False
    """Log every HTTP request (uvicorn's access log); off by default, as one line per request
    costs a busy API node a noticeable share of its CPU."""
    api_workers: int = Field(default=1, ge=1, le=64)
    """HTTP API processes of `serve`, sharing its port; the first also runs the workers'
    supervisor, the sweeper and the webhook sender."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """`sdserve worker` only: serve the worker's own /metrics on this port, at `host`
    (default: none; an API node serves its workers' metrics at its /metrics)."""

    @field_validator("database")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("database must be a postgresql:// URL (leave it unset for SQLite)")
        return value

    @field_validator(
        "model", "api_keys", "queues", "webhook_retry_s", "allow_url_networks", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_s")
    @classmethod
    def _positive_waits(cls, value: list[float]) -> list[float]:
        if not value or any(wait <= 0 for wait in value):
            raise ValueError("webhook_retry_s must be one or more waits, each above 0 seconds")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        if value.strip().lower() not in ("", "none"):
            try:
                limits.parse_many(value)
            except ValueError:
                raise ValueError(
                    f"rate_limit must be like '100/second;3000/minute' or 'none' (got {value!r})"
                ) from None
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is not None:
            parse_s3_url(value)  # its ValueError names what is wrong
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_limit_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("rate_limit_storage must be memory:// or a redis:// URL")
        return value

    def max_batch_for(self, device: str) -> int:
        """`max_batch`, or the default measured best on this kind of device (bench/README)."""
        if self.max_batch is not None:
            return self.max_batch
        return DEFAULT_MAX_BATCH["cpu" if device == "cpu" else "gpu"]

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def loras_dir(self) -> Path:
        return self.lora_dir or self.data_dir / "loras"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"


class InvalidSettings(ValueError):
    """Settings that break a rule; the message names each bad one, on one line."""


def read_settings(given: Mapping[str, Any]) -> Settings:
    """The settings of the environment, overridden by the values `given` (None: not given)."""
    try:
        return Settings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        raise InvalidSettings(_problems(exc)) from None


def _problems(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        if error["type"] == "default_factory_not_called":
            continue  # a default computed from a setting that is itself bad: said already
        name = ".".join(map(str, error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        if not message.startswith(name):  # the validators' own messages name the setting
            message = f"{name}: {message} (got {error['input']!r})"
        problems.append(message)
    return "; ".join(problems)
