"""Shared mode across processes: API nodes and `sdserve worker`s on one PostgreSQL and one S3.

Everything is real and on loopback: PostgreSQL, a moto S3 server, `sdserve serve --workers 0`
API nodes and `sdserve worker` processes, killed with SIGKILL where a test says so.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from tests.conftest import API_KEY, shared_env
from tests.helpers import Receiver, ServerProcess, WorkerProcess, stored_images, wait_for
from tests.pg import fresh_database

FAST = {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 3}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
HEARTBEAT_TIMEOUT_S = 3


@dataclass
class Cluster:
    database: str
    env: dict[str, str]
    nodes: list[ServerProcess]
    workers: list[WorkerProcess]
    worker_args: list[str]
    log_dir: Path

    def client(self, node: int) -> httpx.Client:
        return httpx.Client(
            base_url=self.nodes[node].url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        )

    def add_worker(self, *extra: str) -> WorkerProcess:
        worker = WorkerProcess(self.log_dir, [*self.worker_args, *extra], self.env)
        worker.start()
        worker.worker_id()
        self.workers.append(worker)
        return worker

    def running_worker_of(self, job_id: str) -> str | None:
        with psycopg.connect(self.database) as db:
            row = db.execute(
                "SELECT worker_id FROM sdserve_jobs WHERE id = %s AND status = 'IN_PROGRESS'",
                (job_id,),
            ).fetchone()
        return None if row is None else str(row[0])


@contextmanager
def cluster(
    tmp_path: Path,
    tiny_model: Path,
    s3_endpoint: str,
    nodes: int,
    settings: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """`nodes` API-only nodes on a fresh database and bucket prefix, with `settings` (env)
    for nodes and workers alike; workers are added by tests."""
    models = ["--model", str(tiny_model), "--model", f"other={tiny_model}"]
    with fresh_database() as database:
        env = {
            **shared_env(database, s3_endpoint, "sdserve-cluster", prefix=tmp_path.name),
            "SDSERVE_API_KEYS": API_KEY,
            "SDSERVE_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "SDSERVE_SWEEP_INTERVAL_S": "0.5",
            **(settings or {}),
        }
        group = Cluster(
            database=database,
            env=env,
            nodes=[
                ServerProcess(
                    data_dir=tmp_path / f"node{i}",
                    args=["--workers", "0", *models],
                    env=env,
                    expect_workers=False,
                )
                for i in range(nodes)
            ],
            workers=[],
            worker_args=["--device", "cpu", "--threads", "1", *models],
            log_dir=tmp_path,
        )
        try:
            for node in group.nodes:
                node.start(wait_ready=False)
            for node in group.nodes:
                node.wait_ready()
            yield group
        finally:
            for worker in group.workers:
                worker.stop()
            for node in group.nodes:
                node.stop()


def submit(client: httpx.Client, endpoint: str = "default", **body: object) -> str:
    payload = {"input": FAST, **body}
    r = client.post(f"/v2/{endpoint}/run", json=payload)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_watch_and_cancel_through_another_node_stops_the_worker(
    tmp_path: Path, tiny_model: Path, s3_endpoint: str
) -> None:
    with cluster(tmp_path, tiny_model, s3_endpoint, nodes=2) as group:
        group.add_worker()
        a, b = group.client(0), group.client(1)
        long_job = submit(a, input={**FAST, "num_inference_steps": 500})
        wait_for(b, f"/v2/default/status/{long_job}", {"IN_PROGRESS"})
        time.sleep(0.5)
        stream = b.get(f"/v2/default/stream/{long_job}").json()
        assert stream["status"] == "IN_PROGRESS" and stream["stream"], stream
        assert all(e["output"]["total"] == 500 for e in stream["stream"])
        submitted_at = time.time()
        next_job = submit(a)
        cancelled_at = time.time()
        r = b.post(f"/v2/default/cancel/{long_job}")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
        body = wait_for(a, f"/v2/default/status/{next_job}", FINAL)
        assert body["status"] == "COMPLETED"
        # The worker let go of the cancelled job within a step: the next one started at once.
        assert submitted_at + body["delayTime"] / 1000 - cancelled_at < 1.0
        assert a.get(f"/v2/default/status/{long_job}").json()["status"] == "CANCELLED"
        assert stored_images(group.nodes[0], long_job) == []


def test_normal_jobs_before_low_priority_and_per_model_queues(
    tmp_path: Path, tiny_model: Path, s3_endpoint: str
) -> None:
    with cluster(tmp_path, tiny_model, s3_endpoint, nodes=1) as group:
        group.add_worker("--queue", "default")  # this worker never takes `other` jobs
        client = group.client(0)
        blocker = submit(client, input={**FAST, "num_inference_steps": 500})
        wait_for(client, f"/v2/default/status/{blocker}", {"IN_PROGRESS"})
        other = submit(client, "other")
        low = submit(client, policy={"lowPriority": True})
        normal = [submit(client), submit(client)]
        client.post(f"/v2/default/cancel/{blocker}")
        order: list[str] = []
        pending = [low, *normal]
        deadline = time.time() + 120
        while pending and time.time() < deadline:
            for job_id in list(pending):
                if client.get(f"/v2/default/status/{job_id}").json()["status"] != "IN_QUEUE":
                    order.append(job_id)
                    pending.remove(job_id)
            time.sleep(0.02)
        assert order == [*normal, low]
        # `other` has no worker: it waits, queued, until one that serves it starts
        assert client.get(f"/v2/other/status/{other}").json()["status"] == "IN_QUEUE"
        group.add_worker("--queue", "other")
        body = wait_for(client, f"/v2/other/status/{other}", FINAL)
        assert body["status"] == "COMPLETED"


def test_killed_worker_job_recovered_then_failed_after_attempts(
    tmp_path: Path, tiny_model: Path, s3_endpoint: str
) -> None:
    with cluster(tmp_path, tiny_model, s3_endpoint, nodes=1) as group:
        first = group.add_worker()
        client = group.client(0)
        job_id = submit(client, input={**FAST, "num_inference_steps": 150})
        wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})
        first.kill()
        group.add_worker()  # picks the job up once the dead worker's heartbeat expires
        body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=180)
        assert body["status"] == "COMPLETED", body
        assert len(body["output"]) == 1
        assert stored_images(group.nodes[0], job_id) == ["0.png"]  # re-run: no duplicates
        # a job that kills every worker that runs it ends FAILED, with the reason
        job_id = submit(client, input={**FAST, "num_inference_steps": 500})
        for _ in range(3):
            wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"}, timeout_s=180)
            group.workers[-1].kill()
            group.add_worker()
        body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=60)
        assert body["status"] == "FAILED", body
        assert "3 times" in body["error"] and "Traceback" not in body["error"]


def test_a_worker_stopped_at_once_hands_its_job_back_without_using_an_attempt(
    tmp_path: Path, tiny_model: Path, s3_endpoint: str
) -> None:
    """`sdserve worker` told twice to stop (SIGTERM, then SIGTERM: stop now) puts its running
    job back itself; with one attempt per job, the job still completes on another worker."""
    with cluster(
        tmp_path, tiny_model, s3_endpoint, nodes=1, settings={"SDSERVE_MAX_ATTEMPTS": "1"}
    ) as group:
        first = group.add_worker()
        client = group.client(0)
        job_id = submit(client, input={**FAST, "num_inference_steps": 100})
        wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"}, timeout_s=180)
        assert first.process is not None
        first.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=30) != 0
        assert "stopping after the running job" in first.log()
        group.add_worker()
        body = wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=180)
        assert body["status"] == "COMPLETED", body


def test_fifty_jobs_across_two_nodes_each_done_once_while_a_worker_dies(
    tmp_path: Path, tiny_model: Path, s3_endpoint: str
) -> None:
    receiver = Receiver()
    try:
        with cluster(tmp_path, tiny_model, s3_endpoint, nodes=2) as group:
            workers = [group.add_worker(), group.add_worker()]
            clients = [group.client(0), group.client(1)]
            quick = {**FAST, "num_inference_steps": 2}
            jobs = [
                submit(clients[i % 2], input={**quick, "seed": i}, webhook=receiver.url)
                for i in range(50)
            ]
            # kill one worker mid-run, then start it again
            deadline = time.time() + 120
            while not any(group.running_worker_of(j) for j in jobs[10:]):
                assert time.time() < deadline
                time.sleep(0.05)
            workers[0].kill()
            workers[0].start()
            workers[0].worker_id()
            bodies = [
                wait_for(clients[(i + 1) % 2], f"/v2/default/status/{j}", FINAL, timeout_s=300)
                for i, j in enumerate(jobs)
            ]
            assert [b["status"] for b in bodies] == ["COMPLETED"] * 50
            assert [b["output"][0]["seed"] for b in bodies] == list(range(50))
            assert all(stored_images(group.nodes[0], j) == ["0.png"] for j in jobs)
            delivered = receiver.wait(50, timeout_s=60)
            time.sleep(1.0)  # a duplicate delivery would arrive now
            assert sorted(d["id"] for d in receiver.bodies) == sorted(jobs)
            assert len(delivered) == 50
    finally:
        receiver.http.shutdown()
