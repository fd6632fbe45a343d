"""Running the server by hand: what its log says, a busy port, and stopping it with signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.helpers import ONE_WORKER, ServerProcess, wait_for, wait_until

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)


def _long_job(client: httpx.Client) -> str:
    body = {"input": {"prompt": "a red circle on a blue background", "num_inference_steps": 150}}
    job_id: str = client.post("/v2/default/run", json=body).json()["id"]
    wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})
    return job_id


def _exit_code(server: ServerProcess, timeout_s: float = 120) -> int:
    assert server.process is not None
    return server.process.wait(timeout=timeout_s)


def test_start_up_says_what_runs_where_and_nothing_else(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", args=[])
    server.start()
    try:
        httpx.post(
            f"{server.url}/v2/default/runsync",
            json={"input": {"prompt": "a red circle on a blue background"}},
            timeout=120,
        ).raise_for_status()
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert all(LINE.match(line) for line in lines), "\n".join(
        line for line in lines if not LINE.match(line)
    )
    log = server.log()
    summary = next(line for line in lines if "sdserve.server: sdserve " in line)
    assert f"on http://127.0.0.1:{server.port}" in summary
    assert "embedded mode (jobs in SQLite" in summary and str(tmp_path / "data") in summary
    assert "1 worker(s) on auto: cpu" in summary and "default (built-in demo)" in summary
    assert "ready on cpu" in log
    for noise in ("alembic", "[transformers]", "torchvision", "Traceback", "WARNING"):
        assert noise not in log, noise


def test_json_log_lines_for_collectors(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", args=["--log-format", "json"])
    server.start()
    server.stop()
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert records
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert any(r["message"].startswith("sdserve ") for r in records)
    assert any("ready on cpu" in r["message"] for r in records)  # the workers' lines too


def test_a_busy_port_fails_at_once_before_any_worker_starts(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "first", args=[])
    server.start()
    try:
        command = [sys.executable, "-m", "sdserve", "serve", "--port", str(server.port)]
        env = {**os.environ, **ONE_WORKER}
        second = subprocess.run(
            [*command, "--data-dir", str(tmp_path / "second")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        server.stop()
    output = second.stdout + second.stderr
    assert second.returncode == 1, output
    assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in output
    assert "--port" in output
    assert "Traceback" not in output and "started worker" not in output
    assert not (tmp_path / "second").exists()  # nothing was set up before the port failed


def _sigterm_during_a_job(tmp_path: Path) -> tuple[ServerProcess, httpx.Client, str]:
    """A started server, a client of it and the id of its running job, once SIGTERM is sent."""
    server = ServerProcess(data_dir=tmp_path / "data", args=[])
    server.start()
    client = httpx.Client(base_url=server.url, timeout=30)
    job_id = _long_job(client)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    return server, client, job_id


def test_sigterm_drains_the_running_job_and_exits_cleanly(tmp_path: Path) -> None:
    server, client, job_id = _sigterm_during_a_job(tmp_path)
    assert _exit_code(server) == 0, server.log()
    log = server.log()
    assert "Traceback" not in log and "leaked semaphore" not in log, log
    assert "draining" in log

    server.start()  # the same data: the job finished before the server went
    try:
        status = client.get(f"/v2/default/status/{job_id}").json()
        assert status["status"] == "COMPLETED", status
    finally:
        server.stop()


def test_a_second_signal_stops_at_once_and_the_job_runs_after_a_restart(tmp_path: Path) -> None:
    server, client, job_id = _sigterm_during_a_job(tmp_path)
    wait_for_text(server, "draining")
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    assert _exit_code(server, 60) == 0, server.log()
    assert "Traceback" not in server.log() and "leaked semaphore" not in server.log()

    server.start()
    try:
        done = wait_for(client, f"/v2/default/status/{job_id}", {"COMPLETED", "FAILED"}, 300)
        assert done["status"] == "COMPLETED", done
    finally:
        server.stop()


def test_calls_waiting_on_a_queued_job_answer_as_the_server_begins_to_stop(
    tmp_path: Path,
) -> None:
    # One worker, busy with a long job: the next two jobs wait in the queue when SIGTERM comes.
    server = ServerProcess(data_dir=tmp_path / "data", args=["--max-batch", "1"])
    server.start()
    client = httpx.Client(base_url=server.url, timeout=30)
    running = client.post(
        "/v2/default/run",
        json={"input": {"prompt": "a red circle on a blue background", "num_inference_steps": 500}},
    ).json()["id"]
    wait_for(client, f"/v2/default/status/{running}", {"IN_PROGRESS"})
    prompt = "a blue square on a yellow background"
    with ThreadPoolExecutor(3) as calls:
        runsync = calls.submit(
            httpx.post,
            f"{server.url}/v2/default/runsync?wait=300000",  # 5 minutes
            json={"input": {"prompt": prompt, "seed": 1}},
            timeout=400,
        )
        wait_until(lambda: client.get("/v2/default/health").json()["jobs"]["inQueue"] == 1, 30)
        openai = calls.submit(
            httpx.post,
            f"{server.url}/v1/images/generations",
            json={"prompt": prompt, "response_format": "b64_json"},
            timeout=600,
        )
        wait_until(lambda: client.get("/v2/default/health").json()["jobs"]["inQueue"] == 2, 30)
        deepinfra = calls.submit(
            httpx.post,
            f"{server.url}/v1/inference/default",
            json={"prompt": prompt},
            timeout=600,
        )
        wait_until(lambda: client.get("/v2/default/health").json()["jobs"]["inQueue"] == 3, 30)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # All answer now, not after their waits (5, 9 and 9 minutes) or the running job.
        answered = runsync.result(timeout=60)
        refused = openai.result(timeout=60)
        refused_too = deepinfra.result(timeout=60)

    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "IN_QUEUE", answered.json()
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5"
    assert refused.headers["x-should-retry"] == "true"  # the openai client sends it again
    error = refused.json()["error"]
    assert error["code"] == "server_stopping", error
    cancelled = re.search(r"job (\S+) had not started and has been cancelled", error["message"])
    assert cancelled, error
    # DeepInfra's synchronous call, the same refusal in its dialect's error body.
    assert refused_too.status_code == 503, refused_too.text
    assert refused_too.headers["retry-after"] == "5"
    cancelled_too = re.search(
        r"job (\S+) had not started and has been cancelled", refused_too.json()["error"]
    )
    assert cancelled_too, refused_too.json()
    assert _exit_code(server) == 0, server.log()  # once the running job has finished
    assert "Traceback" not in server.log()

    server.start()  # the same data: the queued job runs now, the refused one does not
    try:
        queued = answered.json()["id"]
        done = wait_for(client, f"/v2/default/status/{queued}", {"COMPLETED", "FAILED"}, 300)
        assert done["status"] == "COMPLETED", done
        assert client.get(f"/v2/default/status/{running}").json()["status"] == "COMPLETED"
        for refused_id in (cancelled[1], cancelled_too[1]):
            gone = client.get(f"/v2/default/status/{refused_id}").json()
            assert gone["status"] == "CANCELLED", gone
    finally:
        server.stop()


def wait_for_text(server: ServerProcess, text: str, timeout_s: float = 60) -> None:
    wait_until(lambda: text in server.log(), timeout_s, server.log)
