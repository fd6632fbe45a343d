"""Test helper: a real S3-compatible server (moto's standalone server) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


def s3_env() -> dict[str, str]:
    """Fake credentials and a region for boto3, to merge into os.environ or a subprocess env."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start one server and wait until it answers; raise with its log when it does not."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, **s3_env(), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto server exited early (code {process.returncode}):\n{log_path.read_text()}"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:  # S3 ListBuckets
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    _stop(process)
    raise RuntimeError(
        f"moto server not answering on {url} after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}"
    )


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run `python -m moto.server` on a free loopback port and yield its endpoint URL.

    The server accepts any credentials; callers still need some (see `s3_env`) for boto3 to sign.
    """
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        for attempt in range(3):  # the free port may be taken before moto binds it
            try:
                process, url = _start(log_path)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield url
        finally:
            _stop(process)
