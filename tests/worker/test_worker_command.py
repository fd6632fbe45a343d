"""`sdserve worker` refuses a bad configuration with a clear message, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_unknown_queue_is_a_usage_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "sdserve", "worker", "--queue", "nope", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "--queue" in run.stderr and "'nope' is not a configured model" in run.stderr
    assert "Traceback" not in run.stderr


def test_database_must_be_postgresql(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "sdserve", "worker", "--database", "mysql://x/y"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "database must be a postgresql:// URL" in run.stderr


def test_a_metrics_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "sdserve", "worker", "--data-dir", str(tmp_path),
             "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    assert run.returncode == 2
    assert "--metrics-port" in run.stderr and f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr
