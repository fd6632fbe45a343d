"""Dynamic batching on CPU: img/s of concurrent compatible requests by worker layout, and the
serving overhead (runsync vs the raw diffusers call), all measured in this one run.

Starts `sdserve serve` on loopback once per layout (workers x --max-batch, default threads:
the cores shared between workers) with a tiny random SD model built for the run, and sends
`--clients` concurrent clients, each posting `--requests` `/runsync` calls of the same size,
steps and sampler (their prompts and seeds differ, so they may share pipeline calls). Prints
img/s, p50/p99 latency, each layout's ratio to `--max-batch 1`, then the serving overhead:
median `/runsync` latency of one request at a time over the same call made raw in-process.

    python bench/batching.py [--clients 8] [--requests 6] [--steps 10] [--size 128]
        [--layouts 1x1,1x4,1x8,2x1,2x4,default]

A layout is WORKERSxMAX_BATCH, or `default` (what `sdserve serve` does when told nothing).
Run it on an otherwise idle machine: torch slows down many-fold when another process takes
one of its cores.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import served_and_raw, start_server

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow moon", "a black cat"]


@dataclass
class Result:
    layout: str
    images_per_s: float
    p50_s: float
    p99_s: float


def body(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "input": {
            "prompt": PROMPTS[seed % len(PROMPTS)], "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, "guidance_scale": 7.5, "seed": seed,
            "scheduler": "K-LMS",
        }
    }  # fmt: skip


def layout_options(layout: str) -> list[str]:
    if layout == "default":
        return []
    workers, max_batch = layout.split("x")
    return ["--workers", workers, "--max-batch", max_batch]


def concurrent_round(
    url: str, payload: Callable[[int], Any], args: argparse.Namespace
) -> tuple[float, list[float]]:
    """`--clients` clients at once, each posting `--requests` requests (`payload(seed)`) to
    `url`, one after another: (wall seconds, each request's latency). A request that fails, or
    that sdserve answers without COMPLETED, ends the run."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one_client(index: int) -> None:
        with httpx.Client(timeout=600) as client:
            for n in range(args.requests):
                started = time.perf_counter()
                r = client.post(url, json=payload(1000 * index + n))
                answer = r.json() if r.status_code == 200 else None
                with lock:
                    if answer is None or answer.get("status", "COMPLETED") != "COMPLETED":
                        errors.append(r.text[:200])
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[0]}")
    return time.perf_counter() - started, latencies


def measure(layout: str, args: argparse.Namespace, model: str, work: Path) -> Result:
    port = args.port
    server = start_server(work / layout, port, [model], False, options=layout_options(layout))
    try:
        url = f"http://127.0.0.1:{port}/v2/default/runsync"
        for seed in range(2):  # warm-up, outside the clock
            httpx.post(url, json=body(args, seed), timeout=600).raise_for_status()
        wall, latencies = concurrent_round(url, functools.partial(body, args), args)
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    result = Result(layout, len(latencies) / wall, statistics.median(latencies), p99)
    print(
        f"{layout:>8}: {result.images_per_s:5.2f} img/s, p50 {result.p50_s:5.2f} s,"
        f" p99 {result.p99_s:5.2f} s",
        flush=True,
    )
    return result


def overhead(args: argparse.Namespace, model: str, work: Path) -> None:
    """Median /runsync latency over the raw call's, one request at a time, alternating."""
    measured = served_and_raw(
        work / "overhead", args.port, model, args.size, args.steps, args.overhead_rounds, 0.5
    )
    print(f"serving overhead, medians of {args.overhead_rounds}:", flush=True)
    print(measured.report(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="per client")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--layouts", default="1x1,1x4,1x8,2x1,2x4,default")
    parser.add_argument("--overhead-rounds", type=int, default=7)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()

    from tests.models.random_model import build_random_pipeline

    work = Path(tempfile.mkdtemp(prefix="sdserve-batching-"))
    model = work / "tiny-random"
    build_random_pipeline(model, seed=0)
    print(
        f"{os.cpu_count()} cores; {args.clients} clients x {args.requests} /runsync each;"
        f" {args.size}x{args.size}, {args.steps} steps, K-LMS",
        flush=True,
    )
    results = [measure(layout, args, str(model), work) for layout in args.layouts.split(",")]
    by_layout = {r.layout: r for r in results}
    for result in results:
        workers = result.layout.split("x")[0]
        alone = by_layout.get(f"{workers}x1")
        if alone is not None and alone is not result:
            ratio = result.images_per_s / alone.images_per_s
            print(f"{result.layout} / {alone.layout}: x{ratio:.2f} img/s")
    best = max(results, key=lambda r: r.images_per_s)
    print(f"best: {best.layout} at {best.images_per_s:.2f} img/s")
    if args.overhead_rounds:
        overhead(args, str(model), work)


if __name__ == "__main__":
    main()
