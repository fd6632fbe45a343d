"""A worker killed while idle is replaced, and the server goes on taking jobs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil

from tests.helpers import running_server

FAST = {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 2}


def test_a_worker_killed_while_waiting_for_work_does_not_stop_the_server(
    tmp_path: Path, tiny_model: Path
) -> None:
    with running_server(tmp_path / "data", ["--model", str(tiny_model)]) as server:
        assert server.process is not None
        parent = psutil.Process(server.process.pid)

        def workers() -> list[psutil.Process]:
            return [p for p in parent.children() if "spawn_main" in " ".join(p.cmdline())]

        with httpx.Client(base_url=server.url, timeout=120) as client:
            # The worker has run a job and is now waiting to be woken for the next one.
            first = client.post("/v2/default/runsync", json={"input": FAST})
            assert first.json()["status"] == "COMPLETED", first.text
            time.sleep(1)
            [idle] = workers()
            idle.send_signal(signal.SIGKILL)
            idle.wait(timeout=10)
            deadline = time.time() + 120
            while not [p for p in workers() if p.pid != idle.pid]:
                assert time.time() < deadline, "no worker replaced the killed one"
                time.sleep(0.2)
            for _ in range(3):
                answer = client.post("/v2/default/runsync", json={"input": FAST})
                assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED"
