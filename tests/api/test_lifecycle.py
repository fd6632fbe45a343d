"""Jobs across their whole life: retention, webhooks, restarts, crashed workers."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.helpers import (
    Receiver,
    ServerProcess,
    free_port,
    image_from_output,
    link_expiry,
    running_server,
    stored_images,
    wait_for,
    wait_until,
)

FAST = {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 3}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture(scope="module")
def server(backend_server: ServerProcess) -> ServerProcess:
    """Every test here runs on both backends: embedded SQLite, and PostgreSQL with S3."""
    return backend_server


def unsigned(body: dict[str, Any]) -> dict[str, Any]:
    outputs = [{**o, "image": o["image"].split("?")[0]} for o in body["output"]]
    return {**body, "output": outputs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=1)
    yield r
    r.http.shutdown()


def verified(secret: str, receiver: Receiver) -> list[Any]:
    """Each delivery's payload, checked against its Standard Webhooks signature."""
    return [Webhook(secret).verify(body, headers) for body, headers in receiver.raw]


def test_webhook_posted_when_job_ends_and_retried(
    client: httpx.Client, receiver: Receiver, server: ServerProcess
) -> None:
    r = client.post("/v2/default/run", json={"input": FAST, "webhook": receiver.url})
    job_id = r.json()["id"]
    bodies = receiver.wait(2)  # the first delivery fails with a 500, the retry succeeds
    assert len(bodies) == 2
    # Both tries are signed with the server's key, as one event: the same webhook-id.
    secret = (server.data_dir / "webhook-secret").read_text().strip()
    assert verified(secret, receiver) == bodies
    assert len({headers["webhook-id"] for _, headers in receiver.raw}) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another key of 32 bytes........").decode()).verify(
            *receiver.raw[0]
        )
    # the same answer both times (an S3 presigned link is signed afresh each time)
    assert [unsigned(b) for b in bodies[:1]] == [unsigned(b) for b in bodies[1:]]
    assert bodies[1]["id"] == job_id and bodies[1]["status"] == "COMPLETED"
    assert image_from_output(client, bodies[1]["output"][0]["image"]).shape == (128, 128, 3)
    time.sleep(1.5)
    assert len(receiver.bodies) == 2  # delivered once successfully: no more posts


def test_webhook_on_timeout(client: httpx.Client) -> None:
    receiver = Receiver()
    body = {
        "input": {**FAST, "num_inference_steps": 500},
        "webhook": receiver.url,
        "policy": {"executionTimeout": 1000},
    }
    client.post("/v2/default/run", json=body)
    bodies = receiver.wait(1)
    assert bodies and bodies[0]["status"] == "TIMED_OUT"
    receiver.http.shutdown()


def test_ttl_expiry_deletes_job_and_images(client: httpx.Client, server: ServerProcess) -> None:
    # 5 s of retention: time enough, on a loaded machine, to see the images before they go.
    r = client.post("/v2/default/runsync", json={"input": FAST, "policy": {"ttl": 5000}})
    body = r.json()
    assert body["status"] == "COMPLETED"
    url = body["output"][0]["image"]
    assert httpx.get(url).status_code == 200
    assert stored_images(server, body["id"]) == ["0.png"]

    def expired() -> bool:
        return client.get(f"/v2/default/status/{body['id']}").status_code == 404

    wait_until(expired, 20, lambda: "job did not expire")
    assert stored_images(server, body["id"]) == []
    if "SDSERVE_STORAGE" not in server.env:  # a presigned S3 link outlives its object's 404
        assert httpx.get(url).status_code == 404


def test_default_retention_is_30_minutes(client: httpx.Client) -> None:
    body = client.post("/v2/default/runsync", json={"input": FAST}).json()
    assert 1790 <= link_expiry(body["output"][0]["image"]) - time.time() <= 1800


def workers(server: ServerProcess) -> list[psutil.Process]:
    """The server's worker processes (multiprocessing's resource tracker is not one)."""
    assert server.process is not None
    children = psutil.Process(server.process.pid).children()
    return [p for p in children if "spawn_main" in " ".join(p.cmdline())]


def test_server_kill_9_keeps_queued_and_running_jobs(tmp_path: Path, tiny_model: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", args=["--model", str(tiny_model)])
    server.start()
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        running = client.post(
            "/v2/default/run", json={"input": {**FAST, "num_inference_steps": 100, "seed": 1}}
        ).json()["id"]
        queued = client.post("/v2/default/run", json={"input": {**FAST, "seed": 2}}).json()["id"]
        wait_for(client, f"/v2/default/status/{running}", {"IN_PROGRESS"})
        old_workers = workers(server)
        assert old_workers
        server.kill()
        # orphaned workers notice their server is gone and exit
        _, alive = psutil.wait_procs(old_workers, timeout=15)
        assert alive == []
        server.start()
        for job_id in (running, queued):
            body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=180)
            assert body["status"] == "COMPLETED", body
            assert len(body["output"]) == 1
        image_files = sorted(p.name for p in (server.data_dir / "images" / running).iterdir())
        assert image_files == ["0.png"]  # the re-run overwrote, never duplicated
    finally:
        server.stop()


def test_worker_crash_requeues_job_then_gives_up(tmp_path: Path, tiny_model: Path) -> None:
    with running_server(tmp_path / "data", ["--model", str(tiny_model)]) as server:
        client = httpx.Client(base_url=server.url, timeout=30)
        # a job survives one crash of its worker and completes on the replacement worker
        job_id = client.post(
            "/v2/default/run", json={"input": {**FAST, "num_inference_steps": 100}}
        ).json()["id"]
        wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})
        workers(server)[0].send_signal(signal.SIGKILL)
        body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=180)
        assert body["status"] == "COMPLETED", body
        # a job that keeps killing its worker ends FAILED after 3 attempts, with a reason
        job_id = client.post(
            "/v2/default/run", json={"input": {**FAST, "num_inference_steps": 500}}
        ).json()["id"]
        for _ in range(3):
            wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"}, timeout_s=180)
            workers(server)[0].send_signal(signal.SIGKILL)
            time.sleep(1.5)
        body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=60)
        assert body["status"] == "FAILED"
        assert body["error"].startswith("the worker running this job died 3 times (the last")
        assert "Traceback" not in body["error"]
        # and the server still has a working worker
        done = client.post("/v2/default/runsync", json={"input": FAST}).json()
        assert done["status"] == "COMPLETED"


def test_restarts_use_up_no_attempt_but_a_worker_dying_under_its_job_does(
    tmp_path: Path, tiny_model: Path
) -> None:
    """With one attempt per job, a job outlives two `kill -9`s and a stop at once of the whole
    server; a job whose worker is killed under it fails at once, saying so."""
    server = ServerProcess(
        data_dir=tmp_path / "data",
        args=["--model", str(tiny_model)],
        env={"SDSERVE_MAX_ATTEMPTS": "1"},
    )
    server.start()
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        long = {"input": {**FAST, "num_inference_steps": 100, "seed": 5}}
        job_id = client.post("/v2/default/run", json=long).json()["id"]
        # A stop at once (a second Ctrl-C: one alone would let the job finish first).
        for stop in (server.kill, server.kill, server.stop):
            wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"}, timeout_s=180)
            stop()
            server.start()
        body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=180)
        assert body["status"] == "COMPLETED", body
        assert body["output"][0]["seed"] == 5
        # The stopping server put its job back itself; the killed ones' successors did.
        logs = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
        assert "went back to the queue as the server stopped" in logs
        assert logs.count("without using up one of their attempts") == 2

        job_id = client.post("/v2/default/run", json=long).json()["id"]
        wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"}, timeout_s=180)
        workers(server)[0].send_signal(signal.SIGKILL)
        body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=60)
        assert body["status"] == "FAILED", body
        assert body["error"].startswith(
            "the worker running this job died once (the last time it was killed by SIGKILL,"
        )
    finally:
        server.stop()


def test_open_server_refuses_non_loopback_address(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sdserve", "serve", "--host", "0.0.0.0"]
    command += ["--data-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr


def test_open_loopback_server_base64_output_and_broken_model(
    tmp_path: Path, tiny_model: Path, broken_model: Path
) -> None:
    args = ["--model", str(tiny_model), "--output-format", "base64"]
    args += ["--model", f"broken={broken_model}"]
    with running_server(tmp_path / "data", args, {"SDSERVE_MAX_QUEUE": "1"}) as server:
        body = httpx.post(
            f"{server.url}/v2/default/runsync", json={"input": FAST}, timeout=60
        ).json()
        assert body["status"] == "COMPLETED"
        image = body["output"][0]["image"]
        assert not image.startswith("http")
        assert image_from_output(httpx.Client(), image).shape == (128, 128, 3)
        # a model that cannot load fails its jobs with a message, and the worker lives on
        body = httpx.post(
            f"{server.url}/v2/broken/runsync", json={"input": FAST}, timeout=60
        ).json()
        assert body["status"] == "FAILED"
        assert body["error"].startswith("could not load model 'broken'")
        assert "Traceback" not in body["error"]
        body = httpx.post(
            f"{server.url}/v2/default/runsync", json={"input": FAST}, timeout=60
        ).json()
        assert body["status"] == "COMPLETED"


SECRET = "whsec_" + base64.b64encode(b"a webhook key of thirty-two bytes").decode()


@pytest.fixture(scope="module")
def quick_retries(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """A server retrying webhooks after 0.5 s, then every 1 s, for 6 s, with a set key."""
    env = {
        "SDSERVE_WEBHOOK_RETRY_S": "0.5,1",
        "SDSERVE_WEBHOOK_HORIZON_S": "6",
        "SDSERVE_WEBHOOK_SECRET": SECRET,
        "SDSERVE_WEBHOOK_TIMEOUT_S": "2",
    }
    data_dir = tmp_path_factory.mktemp("quick")
    with running_server(data_dir, ["--model", str(tiny_model)], env) as srv:
        yield srv


def test_a_receiver_down_for_a_while_gets_each_event_once_signed(
    quick_retries: ServerProcess,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    with httpx.Client(base_url=quick_retries.url, timeout=60) as client:
        ids = [
            client.post("/v2/default/run", json={"input": FAST, "webhook": url}).json()["id"]
            for _ in range(2)
        ]
        for job_id in ids:
            wait_for(client, f"/v2/default/status/{job_id}", FINAL)
        time.sleep(2)  # the first tries (at once, +0.5 s, +1 s...) find nobody listening
        pending = client.get(f"/v2/default/webhooks/{ids[0]}").json()
        assert pending["webhooks"][0]["status"] == "pending"
        assert pending["webhooks"][0]["attempts"] >= 2
        receiver = Receiver(port=port)
        try:
            receiver.wait(2, timeout_s=20)
            time.sleep(2.5)  # nothing more comes: each event is delivered once
            payloads = verified(SECRET, receiver)
            assert sorted(p["id"] for p in payloads) == sorted(ids)
            assert len({headers["webhook-id"] for _, headers in receiver.raw}) == 2
            assert client.get(f"/v2/default/webhooks/{ids[0]}").json() == {
                "id": ids[0],
                "webhooks": [],
            }
        finally:
            receiver.http.shutdown()


def test_a_webhook_past_its_horizon_is_kept_as_failed(quick_retries: ServerProcess) -> None:
    receiver = Receiver(failures=1000)
    with httpx.Client(base_url=quick_retries.url, timeout=60) as client:
        job_id = client.post(
            "/v2/default/run", json={"input": FAST, "webhook": receiver.url}
        ).json()["id"]
        wait_for(client, f"/v2/default/status/{job_id}", FINAL)
        log_url = f"/v2/default/webhooks/{job_id}"
        deadline = time.time() + 30
        while time.time() < deadline:
            [record] = client.get(log_url).json()["webhooks"]
            if record["status"] == "failed":
                break
            time.sleep(0.2)
    receiver.http.shutdown()
    assert record["url"] == receiver.url and record["lastError"] == "HTTP 500"
    assert record["attempts"] == len(receiver.raw) >= 4  # 0, ~0.5, ~1.5, ~2.5 ... until 6 s
    assert len({headers["webhook-id"] for _, headers in receiver.raw}) == 1
    assert record["webhookId"] == receiver.raw[0][1]["webhook-id"]
