"""sdserve at its defaults against LitServe's layouts, same model, request and load, one run.

Issue 11's CPU goal: sdserve at its DEFAULT settings ahead of LitServe's best on img/s. Both
serve the same tiny random SD model (built for the run) with the same diffusers call (128x128,
10 steps, K-LMS, guidance 7.5, a generator per image, no safety checker; LitServe's side is
bench/litserve_app.py); `--clients`
concurrent clients each send `--requests` requests (prompts and seeds differ). LitServe runs
in the layouts its docs suggest for throughput: one worker batching 4 requests per call, two
one-thread workers, and two one-thread workers batching 4.

LitServe is not a dependency of sdserve: install it in a virtual environment of its own that
sees this one's packages, and name its python:

    python -m venv --system-site-packages /tmp/lsenv && /tmp/lsenv/bin/pip install litserve
    python bench/litserve_compare.py --litserve-python /tmp/lsenv/bin/python
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.batching import concurrent_round
from bench.overhead import start_server
from sdserve.samplers import SAMPLERS

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow moon", "a black cat"]
SIZE, STEPS = 128, 10
LAYOUTS = {"1 worker, batch 4": (1, 4), "2 workers, 1 thread": (2, 1), "2 workers, batch 4": (2, 4)}


def load(url: str, payload: Callable[[int], Any], args: argparse.Namespace) -> float:
    """img/s of `--clients` concurrent clients posting `payload(seed)` to `url`."""
    wall, latencies = concurrent_round(url, payload, args)
    return len(latencies) / wall


def litserve_body(seed: int) -> dict[str, Any]:
    return {"prompt": PROMPTS[seed % len(PROMPTS)], "seed": seed}


def sdserve_body(seed: int, scheduler: str = "K-LMS") -> dict[str, Any]:
    return {
        "input": {
            "prompt": PROMPTS[seed % len(PROMPTS)], "width": SIZE, "height": SIZE,
            "num_inference_steps": STEPS, "guidance_scale": 7.5, "seed": seed,
            "scheduler": scheduler,
        }
    }  # fmt: skip


def measure_litserve(python: str, model: str, port: int, layout: tuple[int, int],
                     args: argparse.Namespace) -> float:  # fmt: skip
    workers, max_batch = layout
    app = Path(__file__).with_name("litserve_app.py")
    command = [python, str(app), model, "--port", str(port)]
    command += ["--workers", str(workers), "--max-batch", str(max_batch)]
    command += ["--scheduler", SAMPLERS[args.scheduler].diffusers_class]
    # A session of its own: LitServe's API and inference processes all go with it.
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).text.strip('"') == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("LitServe did not start")
        for seed in range(2):  # warm-up, outside the clock
            httpx.post(f"{url}/predict", json=litserve_body(seed), timeout=600).raise_for_status()
        return load(f"{url}/predict", litserve_body, args)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        time.sleep(2)  # its inference processes exit after their parent


def measure_sdserve(
    model: str, port: int, work: Path, args: argparse.Namespace, options: list[str]
) -> float:
    data_dir = work / f"sdserve-{'_'.join(options).replace('-', '') or 'defaults'}"
    server = start_server(data_dir, port, [model], False, options=options)
    try:
        url = f"http://127.0.0.1:{port}/v2/default/runsync"

        def body(seed: int) -> dict[str, Any]:
            return sdserve_body(seed, args.scheduler)

        for seed in range(2):
            httpx.post(url, json=body(seed), timeout=600).raise_for_status()
        return load(url, body, args)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litserve-python", help="python of an environment with litserve")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="per client")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument(
        "--litserve-layouts",
        default="1x4,2x1,2x4",
        help="comma-separated WORKERSxBATCH, of: 1x4,2x1,2x4",
    )
    parser.add_argument(
        "--sdserve",
        action="append",
        help="options of one sdserve layout to measure besides its defaults (repeatable;"
        " default: --workers 1)",
    )
    parser.add_argument(
        "--scheduler",
        default="K-LMS",
        choices=list(SAMPLERS),
        help="the sampler both servers run (sdserve's name)",
    )
    args = parser.parse_args()
    if not args.litserve_python:
        parser.error("--litserve-python is needed (see the docstring)")

    from tests.models.random_model import build_random_pipeline

    work = Path(tempfile.mkdtemp(prefix="sdserve-litserve-"))
    model = str(work / "tiny-random")
    build_random_pipeline(Path(model), seed=0)
    print(
        f"{args.clients} clients x {args.requests} requests; {SIZE}x{SIZE}, {STEPS} steps,"
        f" {args.scheduler}"
    )
    results: dict[str, float] = {}
    names = {f"{w}x{b}": name for name, (w, b) in LAYOUTS.items()}
    for offset, name in enumerate(names[layout] for layout in args.litserve_layouts.split(",")):
        results[f"LitServe, {name}"] = measure_litserve(
            args.litserve_python, model, args.port + 1 + offset, LAYOUTS[name], args
        )
        print(f"LitServe, {name}: {results[f'LitServe, {name}']:.2f} img/s", flush=True)
    ours = measure_sdserve(model, args.port, work, args, [])
    print(f"sdserve, defaults: {ours:.2f} img/s", flush=True)
    others = []
    for options in args.sdserve or ["--workers 1"]:
        others.append(measure_sdserve(model, args.port, work, args, options.split()))
        print(f"sdserve {options}: {others[-1]:.2f} img/s", flush=True)
    best = max((v, k) for k, v in results.items())
    print(f"sdserve defaults / LitServe's best ({best[1]}): x{ours / best[0]:.2f}")
    print(f"sdserve's best / LitServe's best: x{max(ours, *others) / best[0]:.2f}")


if __name__ == "__main__":
    main()
