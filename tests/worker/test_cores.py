"""CPU workers share the cores: one alone uses them all, busy ones take their share."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from sdserve.worker import cores
from sdserve.worker.cores import GENERATING, HOLDING, IDLE, CoreShare
from tests.helpers import ServerProcess, wait_for, wait_until

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores or more")
CORES = os.cpu_count() or 1


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_call_takes_its_share_and_gives_threads_back_when_others_start(
    restore_threads: None,
) -> None:
    states = [IDLE, IDLE]
    share = CoreShare(states, 0)
    seen: list[int] = []

    def generate(
        requests: list[object], on_step: Callable[[int, int], None], on_preview: object = None
    ) -> list[list[object]]:
        for step in range(1, 5):
            seen.append(torch.get_num_threads())
            if step == 2:
                states[1] = GENERATING  # the other worker starts a call
            if step == 3:
                states[1] = IDLE  # ... and ends it: this call keeps its one thread
            on_step(step, 4)
        return [[] for _ in requests]

    steps: list[int] = []
    sharing = share.sharing(generate)  # type: ignore[arg-type]
    sharing([object()], lambda done, total: steps.append(done))  # type: ignore[list-item]
    assert seen == [CORES, CORES, CORES // 2, CORES // 2]
    assert steps == [1, 2, 3, 4]  # the runner still hears every step
    assert states == [IDLE, IDLE]

    seen.clear()
    states[1] = GENERATING
    assert share.others_generating()
    sharing([object()], lambda done, total: None)  # type: ignore[list-item]
    assert seen[0] == CORES // 2  # a call starting beside a busy worker takes half


def test_a_batch_of_several_jobs_starts_on_its_share_and_grows_once_the_others_stay_idle(
    restore_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cores, "GROW_AFTER_S", 0.05)
    states = [IDLE, IDLE]
    share = CoreShare(states, 0)
    seen: list[int] = []

    def generate(
        requests: list[object], on_step: Callable[[int, int], None], on_preview: object = None
    ) -> list[list[object]]:
        for step in range(1, 7):
            seen.append(torch.get_num_threads())
            if step == 2:
                states[1] = HOLDING  # the other worker claims jobs: this call keeps its share
            if step == 3:
                states[1] = IDLE
            if step == 4:
                time.sleep(0.1)  # ... and stays idle past GROW_AFTER_S
            on_step(step, 6)
        return [[] for _ in requests]

    # Several jobs in one call: the node is under load, so it starts on its share of the
    # cores though the other worker is idle at this instant.
    share.sharing(generate)([object(), object()], lambda done, total: None)  # type: ignore[arg-type,list-item]
    half = CORES // 2
    assert seen == [half, half, half, half, CORES, CORES]


def test_fixed_threads_never_change(restore_threads: None) -> None:
    states = [IDLE, GENERATING]
    share = CoreShare(states, 0, fixed_threads=1)
    seen: list[int] = []

    def generate(
        requests: list[object], on_step: Callable[[int, int], None], on_preview: object = None
    ) -> list[list[object]]:
        seen.append(torch.get_num_threads())
        states[1] = IDLE
        on_step(1, 2)
        seen.append(torch.get_num_threads())
        return [[] for _ in requests]

    share.sharing(generate)([object()], lambda done, total: None)  # type: ignore[arg-type,list-item]
    assert seen == [1, 1]


def _threads_of(log: str, worker: str) -> list[int]:
    return [int(n) for n in re.findall(rf"{worker}: (\d+) torch thread", log)]


def _worker_of(log: str, job_id: str) -> str:
    found = re.search(rf"worker (worker-\w+): running job {job_id}", log)
    assert found, log
    return found.group(1)


def _body(seed: int, steps: int = 30) -> dict[str, object]:
    return {
        "input": {
            "prompt": f"a red circle {seed}", "seed": seed, "width": 128, "height": 128,
            "num_inference_steps": steps,
        }
    }  # fmt: skip


def test_default_cpu_server_shares_cores_between_its_two_workers(
    tiny_model: Path, tmp_path: Path
) -> None:
    server = ServerProcess(
        data_dir=tmp_path / "data", args=["--model", str(tiny_model)], default_workers=True
    )
    server.start()
    try:
        client = httpx.Client(base_url=server.url, timeout=120)

        def both_ready() -> bool:
            workers = client.get("/v2/default/health").json()["workers"]
            return bool(workers["idle"] + workers["running"] == 2)

        wait_until(both_ready)

        # Alone, a request uses every core.
        lone = client.post("/v2/default/runsync", json=_body(1)).json()
        assert lone["status"] == "COMPLETED", lone
        log = server.log()  # the last count of the worker that ran it: its threads now
        assert _threads_of(log, _worker_of(log, lone["id"]))[-1] == CORES, log

        # Eight at once: both workers generate, on their half of the cores each.
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda seed: client.post("/v2/default/runsync", json=_body(seed)).json(),
                    range(10, 18),
                )
            )
        assert all(a["status"] == "COMPLETED" for a in answers), answers
        # Half the cores each: both busy, or a batch of several jobs (a sign of load).
        assert re.search(rf": {CORES // 2} torch thread\(s\), [12] of 2 workers busy", server.log())

        # A worker killed in the middle of a call leaves no stale share behind.
        long = client.post("/v2/default/run", json=_body(2, steps=500)).json()
        wait_for(client, f"/v2/default/status/{long['id']}", {"IN_PROGRESS"})
        wait_until(lambda: re.search(rf"running job {long['id']}", server.log()) is not None)
        victim = _worker_of(server.log(), long["id"])
        found = re.search(rf"started {victim} \(pid (\d+)\)", server.log())
        assert found, server.log()
        os.kill(int(found.group(1)), signal.SIGKILL)
        client.post(f"/v2/default/cancel/{long['id']}")
        wait_until(lambda: server.log().count("started worker-") == 3)
        wait_until(both_ready)
        for seed in (3, 4):  # each worker in turn, eventually: alone, every core
            alone = client.post("/v2/default/runsync", json=_body(seed)).json()
            assert alone["status"] == "COMPLETED", alone
            log = server.log()
            worker = _worker_of(log, alone["id"])
            assert _threads_of(log, worker)[-1] == CORES, log
    finally:
        server.stop()
