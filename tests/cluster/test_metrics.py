"""Metrics across a cluster: two API nodes and a `sdserve worker` on one PostgreSQL and S3.

Each API node serves what its own processes counted, the worker serves its own on
`--metrics-port`, and the facts of the job store are the same at every node.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.test_shared_mode import FINAL, cluster, submit
from tests.conftest import API_KEY
from tests.helpers import Receiver, free_port, wait_for
from tests.scrape import scrape, value


def test_nodes_and_workers_each_serve_their_own_and_agree_on_the_store(
    tmp_path: Path, tiny_model: Path, s3_endpoint: str
) -> None:
    receiver = Receiver()
    port = free_port()
    try:
        with cluster(tmp_path, tiny_model, s3_endpoint, nodes=2) as group:
            group.add_worker("--queue", "default", "--metrics-port", str(port))
            a, b = group.client(0), group.client(1)
            done = submit(a, webhook=receiver.url)
            submit(b, "other")  # no worker takes `other` jobs: it stays queued
            assert wait_for(b, f"/v2/default/status/{done}", FINAL)["status"] == "COMPLETED"
            assert len(receiver.wait(1)) == 1

            def delivered() -> float:
                return sum(
                    value(scrape(node.url, API_KEY), "sdserve_webhook_deliveries_total",
                          outcome="delivered")
                    for node in group.nodes
                )  # fmt: skip

            deadline = time.time() + 30
            while delivered() < 1:  # counted once the receiver has answered
                assert time.time() < deadline, "the delivery was never counted"
                time.sleep(0.1)
            assert delivered() == 1  # by one node: the outbox leases each delivery to one
            nodes = [scrape(node.url, API_KEY) for node in group.nodes]
            worker = scrape(f"http://127.0.0.1:{port}")
    finally:
        receiver.http.shutdown()

    default, other = {"model": "default"}, {"model": "other"}
    # The worker ran and finished the job: its own port says so.
    assert value(worker, "sdserve_jobs_finished_total", state="COMPLETED", **default) == 1
    assert value(worker, "sdserve_job_queue_delay_seconds_count", **default) == 1
    assert value(worker, "sdserve_denoising_steps_total", **default) == 2
    assert value(worker, "sdserve_images_generated_total", **default) == 1
    # Each node counted the job submitted to it; Prometheus sums counters over nodes.
    submitted = "sdserve_jobs_submitted_total"
    assert [value(n, submitted, **default) for n in nodes] == [1, 0]
    assert [value(n, submitted, **other) for n in nodes] == [0, 1]
    assert all(value(n, "sdserve_denoising_steps_total", **default) == 0 for n in nodes)
    # The store's facts are the same at every node.
    for samples in nodes:
        assert value(samples, "sdserve_job_store_up") == 1
        assert value(samples, "sdserve_queue_depth", **other) == 1
        assert value(samples, "sdserve_queue_depth", **default) == 0
        assert value(samples, "sdserve_workers_alive") == 1
