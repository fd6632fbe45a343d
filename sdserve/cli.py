"""The `sdserve` command line: `serve`, `worker`, `db upgrade`, `generate` and `--version`."""

from __future__ import annotations

import importlib.metadata
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from sdserve.client.command import generate
from sdserve.settings import InvalidSettings, OutputFormat, Settings, read_settings

app = typer.Typer(
    help="sdserve: a self-hosted Stable Diffusion inference server.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Job database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.command()(generate)

DataDir = Annotated[
    Path | None,
    typer.Option(
        help="Folder for the SQLite job database (unless --database), images and keys"
        " (env SDSERVE_DATA_DIR) [default: ./sdserve-data]."
    ),
]
Models = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        metavar="SOURCE|NAME=SOURCE",
        help="Model SOURCE for the default endpoint, or NAME=SOURCE; SOURCE is a hub id, a"
        " diffusers folder or a .safetensors file. Repeatable (env SDSERVE_MODEL,"
        " comma-separated) [default: the built-in demo model].",
    ),
]
ModelsFile = Annotated[
    Path | None,
    typer.Option(
        help="TOML file of models, one [models.NAME] table each (env SDSERVE_MODELS_FILE)."
    ),
]
Database = Annotated[
    str | None,
    typer.Option(
        metavar="postgresql://...",
        help="PostgreSQL database shared by every node (env SDSERVE_DATABASE); only a"
        " postgresql:// URL is taken. Without it, jobs live in SQLite in the data dir.",
    ),
]
Storage = Annotated[
    str | None,
    typer.Option(
        metavar="s3://BUCKET[/PREFIX]?endpoint_url=...",
        help="S3-compatible bucket for images (env SDSERVE_STORAGE); only an s3:// URL is"
        " taken. Without it, images live in the data dir.",
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        help="auto (CUDA if present), cpu, cuda or cuda:N (env SDSERVE_DEVICE) [default: auto]."
    ),
]
Queues = Annotated[
    list[str] | None,
    typer.Option(
        "--queue",
        metavar="MODEL",
        help="Take only this model's jobs; repeatable (env SDSERVE_QUEUES, comma-separated)"
        " [default: every configured model].",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        help="torch CPU threads per worker, fixed (env SDSERVE_CPU_THREADS) [default: the"
        " cores, shared between the busy workers]."
    ),
]
MaxBatch = Annotated[
    int | None,
    typer.Option(
        help="Images a worker makes in one pipeline call from queued jobs that share model,"
        " size, steps, sampler, guidance, LoRA and image count; 1 runs each job alone"
        " [default: 4 on a CPU, 8 on a GPU; env SDSERVE_MAX_BATCH].",
    ),
]
LogFormat = Annotated[
    str | None,
    typer.Option(
        help="Log lines as `text` or `json` (one object per line, for log collectors)"
        " [default: text; env SDSERVE_LOG_FORMAT].",
    ),
]
BatchWait = Annotated[
    float | None,
    typer.Option(
        "--batch-wait-ms",
        help="Milliseconds a worker waits for more jobs to fill a batch [default: 0, only"
        " what is already queued; env SDSERVE_BATCH_WAIT_MS].",
    ),
]

Compile = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile every model's denoiser and VAE decoder; the default model compiles"
        " at worker start (env SDSERVE_COMPILE) [default: per model, `compile` in models.toml].",
    ),
]
ChannelsLast = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last",
        help="Channels-last weights for every model's UNet and VAE (env SDSERVE_CHANNELS_LAST)"
        " [default: per model, `channels_last` in models.toml].",
    ),
]
FuseQkv = Annotated[
    bool | None,
    typer.Option(
        "--fuse-qkv/--no-fuse-qkv",
        help="Fused QKV attention projections where a model offers them (env SDSERVE_FUSE_QKV)"
        " [default: per model, `fuse_qkv` in models.toml].",
    ),
]


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"sdserve {_version()}")
        raise typer.Exit()


def _version() -> str:
    try:
        return importlib.metadata.version("sdserve")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        from sdserve import __version__

        return __version__


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """sdserve: a self-hosted Stable Diffusion inference server."""


def _settings(flags: dict[str, Any]) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    try:
        return read_settings(flags)
    except InvalidSettings as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on; any but a loopback one needs --api-key [default:"
            " 127.0.0.1; env SDSERVE_HOST]."
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port [default: 8000; env SDSERVE_PORT].")
    ] = None,
    data_dir: DataDir = None,
    model: Models = None,
    models_file: ModelsFile = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY",
            help="Accepted API key; repeatable (env SDSERVE_API_KEYS, comma-separated)"
            " [default: none: no key needed, on a loopback address only].",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes to start; 0 for an API-only node (env SDSERVE_WORKERS)"
            " [default: 2 on a CPU, sharing its cores (1 with one core); 1 on a GPU]."
        ),
    ] = None,
    api_workers: Annotated[
        int | None,
        typer.Option(
            help="HTTP API processes sharing the port; the first also runs the workers'"
            " supervisor, the sweeper and webhooks [default: 1; env SDSERVE_API_WORKERS].",
        ),
    ] = None,
    device: Device = None,
    database: Database = None,
    storage: Storage = None,
    queue: Queues = None,
    threads: Threads = None,
    max_batch: MaxBatch = None,
    batch_wait_ms: BatchWait = None,
    log_format: LogFormat = None,
    output_format: Annotated[
        OutputFormat | None,
        typer.Option(
            help="url (signed, expiring links) or base64 (inline) (env SDSERVE_OUTPUT_FORMAT)"
            " [default: url]."
        ),
    ] = None,
    result_ttl: Annotated[
        float | None,
        typer.Option(
            help="Seconds finished jobs and their images are kept (env SDSERVE_RESULT_TTL_S)"
            " [default: 1800]."
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="Base URL clients use, for image links (env SDSERVE_PUBLIC_URL) [default:"
            " the address each request came to]."
        ),
    ] = None,
    compile: Compile = None,
    channels_last: ChannelsLast = None,
    fuse_qkv: FuseQkv = None,
) -> None:
    """Start the HTTP API and its worker processes."""
    from sdserve.detect import UnservedModel
    from sdserve.server import CannotListen, UnsafeBinding
    from sdserve.server import serve as run_server

    settings = _settings(
        {
            "host": host,
            "port": port,
            "data_dir": data_dir,
            "model": model or None,
            "models_file": models_file,
            "api_keys": api_key or None,
            "workers": workers,
            "api_workers": api_workers,
            "device": device,
            "database": database,
            "storage": storage,
            "queues": queue or None,
            "cpu_threads": threads,
            "max_batch": max_batch,
            "batch_wait_ms": batch_wait_ms,
            "output_format": output_format,
            "result_ttl_s": result_ttl,
            "public_url": public_url,
            "compile": compile,
            "channels_last": channels_last,
            "fuse_qkv": fuse_qkv,
            "log_format": log_format,
        }
    )
    try:
        run_server(settings)
    except (UnsafeBinding, UnservedModel) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except CannotListen as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def worker(
    database: Database = None,
    device: Device = None,
    data_dir: DataDir = None,
    model: Models = None,
    models_file: ModelsFile = None,
    storage: Storage = None,
    queue: Queues = None,
    threads: Threads = None,
    max_batch: MaxBatch = None,
    batch_wait_ms: BatchWait = None,
    log_format: LogFormat = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve this worker's Prometheus metrics at http://HOST:PORT/metrics"
            " (env SDSERVE_METRICS_PORT) [default: none]."
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address the metrics port listens on (env SDSERVE_HOST) [default: 127.0.0.1]."
        ),
    ] = None,
    compile: Compile = None,
    channels_last: ChannelsLast = None,
    fuse_qkv: FuseQkv = None,
) -> None:
    """Run one worker (one per GPU) that takes jobs from the database; it needs no open port
    (but may serve its metrics on one).

    SIGTERM or Ctrl-C lets the running job finish, then exits; a second one exits at once,
    putting the job back in its queue without using up one of its attempts.
    """
    from sdserve.detect import UnservedModel
    from sdserve.worker.process import UnknownQueue, worker_main

    settings = _settings(
        {
            "database": database,
            "device": device,
            "data_dir": data_dir,
            "model": model or None,
            "models_file": models_file,
            "storage": storage,
            "queues": queue or None,
            "cpu_threads": threads,
            "max_batch": max_batch,
            "batch_wait_ms": batch_wait_ms,
            "metrics_port": metrics_port,
            "host": host,
            "compile": compile,
            "channels_last": channels_last,
            "fuse_qkv": fuse_qkv,
            "log_format": log_format,
        }
    )
    if settings.metrics_port is not None:
        from sdserve.metrics import serve_process_metrics

        try:
            serve_process_metrics(settings.host, settings.metrics_port)
        except OSError as exc:
            where = f"{settings.host}:{settings.metrics_port}"
            raise typer.BadParameter(
                f"cannot listen on {where}: {exc.strerror}", param_hint="--metrics-port"
            ) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, _drain_then_exit(stop))
    signal.signal(signal.SIGINT, _drain_then_exit(stop))
    worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    try:
        worker_main(settings, worker_id, wake=None, events=None, parent_pid=None, stop=stop)
    except UnknownQueue as exc:
        raise typer.BadParameter(str(exc), param_hint="--queue") from None
    except UnservedModel as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _drain_then_exit(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        typer.echo("stopping after the running job (signal again to stop now)", err=True)
        stop.set()

    return handle


@db_app.command("upgrade")
def db_upgrade(database: Database = None, data_dir: DataDir = None) -> None:
    """Create or upgrade the job database's schema and print the revisions applied: the
    PostgreSQL database of --database (or SDSERVE_DATABASE), else the SQLite file in the data
    dir. Safe while other nodes run or start; `serve` and `worker` also do it at start."""
    from sdserve.jobs.backends import upgrade_database

    applied = upgrade_database(_settings({"database": database, "data_dir": data_dir}))
    lines = [f"sdserve schema revision {revision}" for revision in applied]
    typer.echo("\n".join(lines) if lines else "the schema is up to date")
