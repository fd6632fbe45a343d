"""Fair sharing between API keys: request rates, queue quotas, what /health and ids reveal.

An API-only server (`--workers 0`): jobs stay queued, so quotas can be filled on purpose.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, running_server

# Keys A and B are flooded by the first test; D and E start each later test with a full
# rate window, whatever the order and speed of the tests before.
KEY_A, KEY_B, KEY_C, KEY_D, KEY_E = "key-a", "key-b", "key-c", "key-d", "key-e"
RATE = "20/second"
QUOTA = 3
RUN = {"input": {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 2}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    env = {
        "SDSERVE_API_KEYS": ",".join([KEY_A, KEY_B, KEY_C, KEY_D, KEY_E]),
        "SDSERVE_RATE_LIMIT": RATE,
        "SDSERVE_MAX_QUEUED_PER_KEY": str(QUOTA),
        "SDSERVE_MODELSLAB_WAIT_S": "0",
    }
    args = ["--workers", "0", "--model", str(tiny_model)]
    with running_server(tmp_path_factory.mktemp("data"), args, env, workers=False) as srv:
        yield srv


def client_of(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def _burst(server: ServerProcess, key: str, path: str, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        return list(await asyncio.gather(*(client.get(path) for _ in range(count))))


async def _both(server: ServerProcess) -> tuple[list[httpx.Response], list[httpx.Response]]:
    flood = asyncio.create_task(_burst(server, KEY_A, "/v2/default/health", 120))
    await asyncio.sleep(0.05)
    polite = await _burst(server, KEY_B, "/v2/default/health", 10)
    return await flood, polite


def test_a_flooding_key_is_throttled_while_another_is_served(server: ServerProcess) -> None:
    flood, polite = asyncio.run(_both(server))
    statuses = [r.status_code for r in flood]
    assert set(statuses) == {200, 429} and statuses.count(200) <= 40, statuses
    refused = next(r for r in flood if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert refused.json()["error"].startswith("too many requests with this API key: at most 20")
    assert [r.status_code for r in polite] == [200] * 10


def test_429_takes_each_dialects_error_shape(server: ServerProcess) -> None:
    asyncio.run(_burst(server, KEY_C, "/v2/default/health", 40))  # use up KEY_C's second
    with client_of(server, KEY_C) as client:
        openai = client.get("/v1/models")
        modelslab = client.post("/api/v6/images/fetch/1", json={"key": KEY_C})
        deepinfra = client.post("/v1/inference/default", json={"prompt": "p"})
    assert openai.status_code == 429 and openai.headers["retry-after"]
    assert openai.json()["error"]["type"] == "requests"
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"
    assert modelslab.status_code == 429 and modelslab.json()["status"] == "error"
    assert deepinfra.status_code == 429 and "too many requests" in deepinfra.json()["error"]


def test_a_key_full_of_queued_jobs_does_not_block_others(server: ServerProcess) -> None:
    with client_of(server, KEY_D) as a, client_of(server, KEY_E) as b:
        queued_a = [a.post("/v2/default/run", json=RUN) for _ in range(QUOTA)]
        assert [r.status_code for r in queued_a] == [200] * QUOTA
        over = a.post("/v2/default/run", json=RUN)
        assert over.status_code == 429 and over.headers["retry-after"] == "5"
        assert f"already has {QUOTA} queued jobs" in over.json()["error"]
        # The quota is the key's, across dialects and endpoints.
        openai = a.post("/v1/images/generations", json={"prompt": "p", "size": "256x256"})
        assert openai.status_code == 429, openai.text
        assert b.post("/v2/default/run", json=RUN).status_code == 200
        # /health counts only the caller's own jobs.
        assert a.get("/v2/default/health").json()["jobs"]["inQueue"] == QUOTA
        assert b.get("/v2/default/health").json()["jobs"]["inQueue"] == 1
        # Room again once the key's jobs leave the queue.
        assert a.post("/v2/default/purge-queue").json()["removed"] == QUOTA
        assert a.post("/v2/default/run", json=RUN).status_code == 200
        a.post("/v2/default/purge-queue")
        b.post("/v2/default/purge-queue")


def test_modelslab_ids_cannot_be_guessed_or_read_by_another_key(server: ServerProcess) -> None:
    body = {"prompt": "a red circle", "width": 256, "height": 256, "samples": 1}
    with client_of(server, KEY_D) as a, client_of(server, KEY_E) as b:
        ids = [a.post("/api/v6/images/text2img", json={**body, "key": KEY_D}).json()["id"]
               for _ in range(3)]  # fmt: skip
        assert all(isinstance(i, int) and 2**32 <= i < 2**53 for i in ids), ids
        assert len(set(ids)) == 3
        # Neither consecutive nor ordered: another key's id tells nothing of the next one.
        assert all(abs(x - y) > 1 for x, y in itertools.pairwise(ids))
        theirs = b.post(f"/api/v6/images/fetch/{ids[0]}", json={"key": KEY_E}).json()
        assert theirs["status"] == "error" and f"no request {ids[0]}" in theirs["message"]
        mine = a.post(f"/api/v6/images/fetch/{ids[0]}", json={"key": KEY_D}).json()
        assert mine["status"] == "processing" and mine["id"] == ids[0]
        a.post("/v2/default/purge-queue")
