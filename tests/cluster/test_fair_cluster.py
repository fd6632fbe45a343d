"""Across API nodes of one cluster (PostgreSQL, S3, rate counts in Redis): an Idempotency-Key
makes one job whichever node gets it, and a key's rate limit holds on every node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import shared_env
from tests.helpers import ServerProcess
from tests.pg import fresh_database

REDIS = "redis://127.0.0.1:6379"
RUN = {"input": {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 2}}


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, s3_endpoint: str
) -> Iterator[tuple[list[ServerProcess], str]]:
    """Two API-only nodes; the API key is new each run, since Redis outlives the test."""
    key = f"cluster-{uuid.uuid4()}"
    tmp = tmp_path_factory.mktemp("fair")
    with fresh_database() as database:
        env = {
            **shared_env(database, s3_endpoint, "sdserve-fair", prefix=tmp.name),
            "SDSERVE_API_KEYS": key,
            "SDSERVE_RATE_LIMIT": "30/10seconds",
            "SDSERVE_RATE_LIMIT_STORAGE": REDIS,
        }
        servers = [
            ServerProcess(
                data_dir=tmp / f"node{i}",
                args=["--workers", "0", "--model", str(tiny_model)],
                env=env,
                expect_workers=False,
            )
            for i in range(2)
        ]
        try:
            for server in servers:
                server.start()
            yield servers, key
        finally:
            for server in servers:
                server.stop()


async def _submit_to_both(servers: list[ServerProcess], key: str) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}
    clients = [httpx.AsyncClient(base_url=s.url, headers=headers, timeout=30) for s in servers]
    try:
        calls = [c.post("/v2/default/run", json=RUN) for c in clients for _ in range(3)]
        return list(await asyncio.gather(*calls))
    finally:
        for client in clients:
            await client.aclose()


def test_one_idempotency_key_makes_one_job_across_nodes(
    nodes: tuple[list[ServerProcess], str],
) -> None:
    servers, key = nodes
    answers = asyncio.run(_submit_to_both(servers, key))
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    with httpx.Client(base_url=servers[1].url, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v2/default/health").json()["jobs"]["inQueue"] == 1
        c.post("/v2/default/purge-queue")


def test_a_keys_rate_limit_holds_on_every_node(nodes: tuple[list[ServerProcess], str]) -> None:
    servers, key = nodes
    auth = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=servers[0].url, headers=auth) as first,
        httpx.Client(base_url=servers[1].url, headers=auth) as second,
    ):
        statuses = [first.get("/v2/default/health").status_code for _ in range(35)]
        assert 429 in statuses
        refused = second.get("/v2/default/health")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 10
