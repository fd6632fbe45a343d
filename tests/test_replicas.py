"""`sdserve serve --api-workers 2`: two HTTP processes on one port, as clients see them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import API_KEY
from tests.helpers import ServerProcess, running_server, wait_for, wait_until
from tests.scrape import scrape, value

FAST = {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 2}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("data")
    args = ["--model", str(tiny_model), "--api-workers", "2"]
    # No rate limit: 24 clients reading every job at once pass the default 100 requests/s of
    # a process on a fast machine, and a 429 then differs from the other answers.
    env = {"SDSERVE_API_KEYS": API_KEY, "SDSERVE_RATE_LIMIT": "none"}
    with running_server(data_dir, args, env) as srv:
        yield srv


def api_pids(server: ServerProcess) -> set[int]:
    """The processes listening on the server's port: the primary and its replicas."""
    assert server.process is not None
    primary = psutil.Process(server.process.pid)
    pids = set()
    for process in [primary, *primary.children()]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:  # killed and not yet reaped
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == server.port for c in connections):
            pids.add(process.pid)
    return pids


def serving_pids(server: ServerProcess, clients: list[httpx.Client]) -> set[int]:
    """The processes holding the server's end of the clients' open connections."""
    assert server.process is not None
    primary = psutil.Process(server.process.pid)
    ours = {client_port(client) for client in clients}
    pids = set()
    for process in [primary, *primary.children()]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port in ours for c in connections):
            pids.add(process.pid)
    return pids


def client_port(client: httpx.Client) -> int:
    """The local port of the client's one keep-alive connection."""
    pool = client._transport._pool  # type: ignore[attr-defined]
    [connection] = pool.connections
    stream = connection._connection._network_stream
    return int(stream.get_extra_info("socket").getsockname()[1])


def open_clients(server: ServerProcess, count: int) -> list[httpx.Client]:
    """At least `count` clients, each with one connection to the server, and more (up to 8
    times as many) until every API process holds one: the kernel hands each connection to
    whichever process accepts first, and on a busy machine one may take a long run of them."""
    processes = len(api_pids(server))
    clients: list[httpx.Client] = []
    while len(clients) < count or (
        len(serving_pids(server, clients)) < processes and len(clients) < 8 * count
    ):
        client = httpx.Client(
            base_url=server.url, headers=AUTH, timeout=60, limits=httpx.Limits(max_connections=1)
        )
        clients.append(client)
        assert client.get("/healthz").status_code == 200
    return clients


def test_two_processes_answer_on_one_port(server: ServerProcess) -> None:
    assert len(api_pids(server)) == 2


def test_jobs_complete_and_read_the_same_from_every_process(server: ServerProcess) -> None:
    clients = open_clients(server, 24)
    try:
        assert len(serving_pids(server, clients)) == 2, "one process took every connection"
        # Submitted through both processes: each wakes the primary's worker.
        ids = [c.post("/v2/default/run", json={"input": FAST}).json()["id"] for c in clients[:4]]
        for job_id in ids:
            assert wait_for(clients[0], f"/v2/default/status/{job_id}", {"COMPLETED"})
        # A job awaited in a replica: the primary relays its worker's news of the end.
        for client in clients[:4]:
            answer = client.post("/v2/default/runsync", json={"input": FAST}).json()
            assert answer["status"] == "COMPLETED", answer
        for job_id in ids:
            answers = [c.get(f"/v2/default/status/{job_id}").json() for c in clients]
            differing = [answer for answer in answers if answer != answers[0]]
            assert not differing, (answers[0], differing)
            stream = clients[-1].get(f"/v2/default/stream/{job_id}").json()
            assert stream["status"] == "COMPLETED" and stream["output"] == answers[0]["output"]
    finally:
        for client in clients:
            client.close()


def test_metrics_count_the_requests_of_every_process(server: ServerProcess) -> None:
    route = {"method": "GET", "route": "/healthz", "status": "200"}
    name = "sdserve_http_request_duration_seconds_count"
    before = value(scrape(server.url, API_KEY), name, **route)
    clients = open_clients(server, 16)  # one /healthz each
    try:
        assert len(serving_pids(server, clients)) == 2
        for client in clients:
            assert client.get("/healthz").status_code == 200
    finally:
        for client in clients:
            client.close()
    # Each scrape, answered by either process, merges both processes' counts.
    for _ in range(4):  # each on a connection of its own, so answered by either process
        samples = scrape(server.url, API_KEY)
        assert value(samples, name, **route) - before >= 32
        assert value(samples, "sdserve_job_store_up") == 1


def test_a_killed_replica_is_replaced(server: ServerProcess) -> None:
    assert server.process is not None
    [replica] = api_pids(server) - {server.process.pid}
    psutil.Process(replica).send_signal(signal.SIGKILL)
    primary = server.process.pid
    wait_until(
        lambda: len(api_pids(server) - {primary, replica}) == 1,
        60,
        lambda: f"no new API process:\n{server.log()}",
    )
    assert "died (exit code -9); starting a new one" in server.log()
    clients = open_clients(server, 16)
    try:
        job_id = clients[-1].post("/v2/default/run", json={"input": FAST}).json()["id"]
        assert wait_for(clients[0], f"/v2/default/status/{job_id}", {"COMPLETED"})
    finally:
        for client in clients:
            client.close()


def test_replicas_exit_when_the_primary_is_killed(tmp_path: Path, tiny_model: Path) -> None:
    args = ["--model", str(tiny_model), "--api-workers", "3", "--workers", "0"]
    env = {"SDSERVE_API_KEYS": API_KEY}
    with running_server(tmp_path / "data", args, env, workers=False) as srv:
        assert srv.process is not None
        # Keys and the default rate limit counted in memory: each process counts on its own.
        assert "a key may get up to 3 times SDSERVE_RATE_LIMIT" in srv.log()
        deadline = time.time() + 60
        while len(replicas := api_pids(srv) - {srv.process.pid}) != 2:
            assert time.time() < deadline, srv.log()
            time.sleep(0.2)
        srv.kill()
        _, alive = psutil.wait_procs([psutil.Process(pid) for pid in replicas], timeout=30)
        assert not alive, f"replicas still running after their primary was killed: {alive}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/healthz", timeout=5)


def test_sigterm_stops_every_api_process_taking_requests_while_the_job_finishes(
    tmp_path: Path, tiny_model: Path
) -> None:
    # SIGTERM reaches the primary alone (docker stop, kill): the replicas must stop taking
    # requests with it, not accept jobs that no worker of the draining node will start.
    args = ["--model", str(tiny_model), "--api-workers", "2"]
    env = {"SDSERVE_API_KEYS": API_KEY}
    with running_server(tmp_path / "data", args, env) as srv:
        assert srv.process is not None
        primary = srv.process.pid
        wait_until(lambda: len(api_pids(srv)) == 2, 60, srv.log)
        slow = {**FAST, "width": 512, "height": 512, "num_inference_steps": 500}
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as client:
            answer = client.post("/v2/default/run", json={"input": slow}).json()
            assert "id" in answer, answer
            wait_for(client, f"/v2/default/status/{answer['id']}", {"IN_PROGRESS"})
        srv.process.send_signal(signal.SIGTERM)
        # Nothing listens on the port any more, while the job runs on.
        wait_until(lambda: not api_pids(srv), 30, lambda: f"{api_pids(srv)} listen:\n{srv.log()}")
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{srv.url}/v2/default/run", headers=AUTH, json={"input": FAST}, timeout=5)
        # The primary logs its drain once its own HTTP server has shut down.
        wait_until(lambda: "draining" in srv.log(), 60, srv.log)
        assert psutil.pid_exists(primary)
        srv.process.send_signal(signal.SIGTERM)  # the second signal: at once
        assert srv.process.wait(timeout=60) == 0, srv.log()
    assert "Traceback" not in srv.log()
