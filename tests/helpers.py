"""Test helpers: a real `sdserve serve` process on loopback, and image utilities."""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
from PIL import Image

STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(
    process: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout_s: float
) -> None:
    """Ask a process to stop with `sig`; kill it if it has not within `timeout_s`."""
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


LOOPBACK_URLS = {"SDSERVE_ALLOW_URL_NETWORKS": "127.0.0.0/8,::1"}
"""Lets servers under test fetch images from and post webhooks to the tests' loopback servers
(a test of the SSRF guard overrides it with an empty value)."""

ONE_WORKER = {"SDSERVE_WORKERS": "1"}
"""Servers under test start one worker unless a test asks for more (the CPU default, two,
would double every server's start-up on the suite's two cores; tests/worker/test_cores.py
runs the default)."""


@dataclass
class ServerProcess:
    """A `sdserve serve` subprocess; restartable on the same port and data directory."""

    data_dir: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    expect_workers: bool = True
    """Wait for a worker at start (False for an API-only node, `--workers 0`)."""
    default_workers: bool = False
    """Start as many workers as `serve` does by default (else one, unless `args` or `env`
    say otherwise)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}-{time.time():.0f}.log"
        env = {**os.environ, **LOOPBACK_URLS, **({} if self.default_workers else ONE_WORKER)}
        env |= {**self.env, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "sdserve", "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until the API answers and a worker has sent its first heartbeat."""
        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/v2/default/health", headers=self.auth, timeout=2)
                workers = r.json().get("workers", {}) if r.status_code == 200 else {}
                if r.status_code == 200 and not self.expect_workers:
                    return
                if workers.get("idle", 0) + workers.get("running", 0) > 0:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    @property
    def auth(self) -> dict[str, str]:
        key = self.env.get("SDSERVE_API_KEYS", "").split(",")[0]
        return {"Authorization": f"Bearer {key}"} if key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL the server process (its workers notice and exit)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop at once, as a second Ctrl-C does: running jobs go back to the queue (one
        Ctrl-C would let them finish first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.3)
        stop_process(self.process, signal.SIGINT, timeout_s=20)


@dataclass
class WorkerProcess:
    """A `sdserve worker` subprocess; restartable with the same arguments."""

    log_dir: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> None:
        self.log_path = self.log_dir / f"worker-{time.time_ns()}.log"
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "sdserve", "worker", *self.args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def worker_id(self, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        """The id the worker announced once ready to take jobs."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            for line in self.log().splitlines():
                if " ready on " in line and "worker " in line:
                    return line.split("worker ", 1)[1].split()[0]
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout_s}s:\n{self.log()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, timeout_s=30)


@contextmanager
def running_server(
    data_dir: Path, args: list[str], env: dict[str, str] | None = None, workers: bool = True
) -> Iterator[ServerProcess]:
    """A started server, stopped afterwards; `workers=False` for an API-only node (pass
    `--workers 0` in `args`), ready once its API answers."""
    server = ServerProcess(data_dir=data_dir, args=args, env=env or {}, expect_workers=workers)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 120, explain: Callable[[], str] = str
) -> None:
    """Poll `condition` until it holds; past `timeout_s`, fail with `explain()`."""
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out: {explain()}"
        time.sleep(0.1)


def wait_for(
    client: httpx.Client, path: str, statuses: set[str], timeout_s: float = 120
) -> dict[str, Any]:
    """Poll a status path until its status is one of `statuses`."""
    deadline = time.time() + timeout_s
    body: dict[str, Any] = {}
    while time.time() < deadline:
        r = client.get(path)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {statuses}; last: {body}")


def decode_png(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


BATCH_LEVELS = 1
"""How far an image made in one batched call may stray from its seed made alone (README)."""


def assert_batched_matches_alone(
    batched: np.ndarray[Any, Any], alone: np.ndarray[Any, Any]
) -> None:
    """A request's image i against its seed s+i run alone: a batch sums in another order, so
    they agree to within `BATCH_LEVELS` of 255, as the README promises."""
    assert batched.shape == alone.shape
    difference = np.abs(batched.astype(int) - alone.astype(int)).max()
    assert difference <= BATCH_LEVELS, f"batched image strays {difference} levels from alone"


def image_from_output(client: httpx.Client, value: str) -> np.ndarray[Any, Any]:
    """Pixels of an `output[].image`: fetch a URL or decode base64."""
    if value.startswith("http"):
        r = client.get(value)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        return decode_png(r.content)
    return decode_png(base64.b64decode(value))


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Receiver:
    """A webhook receiver on loopback that fails its first `failures` deliveries (on `port`,
    default a free one)."""

    def __init__(self, failures: int = 0, port: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[tuple[bytes, dict[str, str]]] = []
        """Each delivery's body as sent, and its headers (lower-case names)."""
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.raw.append((body, headers))
                receiver.bodies.append(json.loads(body))
                failing = len(receiver.bodies) <= receiver.failures
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
        deadline = time.time() + timeout_s
        while len(self.bodies) < count and time.time() < deadline:
            time.sleep(0.05)
        return self.bodies


def stored_images(server: ServerProcess, job_id: str) -> list[str]:
    """Names of a job's stored images, in the server's data dir or its S3 bucket."""
    storage = server.env.get("SDSERVE_STORAGE")
    if storage is None:
        folder = server.data_dir / "images" / job_id
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    import boto3  # type: ignore[import-untyped]

    from sdserve.storage.s3 import S3ImageStore

    store = S3ImageStore.from_url(storage)
    s3 = boto3.client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    prefix = f"{store.prefix}/{job_id}/" if store.prefix else f"{job_id}/"
    listed = s3.list_objects_v2(Bucket=store.bucket, Prefix=prefix)
    return sorted(item["Key"].rsplit("/", 1)[1] for item in listed.get("Contents", []))


def link_expiry(url: str) -> float:
    """When an image link stops working: sdserve's signed link, or an S3 presigned one."""
    query = dict(parse_qsl(urlsplit(url).query))
    if "expires" in query:
        return float(query["expires"])
    signed = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    return signed.replace(tzinfo=datetime.UTC).timestamp() + float(query["X-Amz-Expires"])
