"""sdserve at its defaults against LitServe's layouts, same model, request and load, one run.

Issue 11's CPU goal: sdserve at its DEFAULT settings ahead of LitServe's best on img/s. Both
serve the same tiny random SD model (built for the run) with the same diffusers call (128x128,
10 steps, K-LMS, guidance 7.5, a generator per image, no safety checker); `--clients`
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
import base64
import io
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import start_server

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow moon", "a black cat"]
SIZE, STEPS = 128, 10
LAYOUTS = {"1 worker, batch 4": (1, 4), "2 workers, 1 thread": (2, 1), "2 workers, batch 4": (2, 4)}


def serve_litserve(model: str, port: int, workers: int, max_batch: int) -> None:
    """Run LitServe (in LitServe's own environment) around the same diffusers call."""
    import litserve as ls
    import torch
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    class Diffusion(ls.LitAPI):  # type: ignore[misc]
        def setup(self, device: str) -> None:
            if workers > 1:
                torch.set_num_threads(1)
            self.pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
            self.pipe.set_progress_bar_config(disable=True)

        def decode_request(self, request: dict[str, Any]) -> tuple[str, int]:
            return request["prompt"], int(request["seed"])

        def batch(self, inputs: list[tuple[str, int]]) -> list[tuple[str, int]]:
            return inputs

        def predict(self, inputs: Any) -> Any:
            many = isinstance(inputs, list)
            items = inputs if many else [inputs]
            self.pipe.scheduler = LMSDiscreteScheduler.from_config(self.pipe.scheduler.config)
            images = self.pipe(
                [p for p, _ in items], height=SIZE, width=SIZE, num_inference_steps=STEPS,
                guidance_scale=7.5,
                generator=[torch.Generator("cpu").manual_seed(s) for _, s in items],
            ).images  # fmt: skip
            return images if many else images[0]

        def unbatch(self, output: list[Any]) -> list[Any]:
            return output

        def encode_response(self, image: Any) -> dict[str, str]:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return {"image": base64.b64encode(buffer.getvalue()).decode()}

    batching = {"max_batch_size": max_batch, "batch_timeout": 0.01} if max_batch > 1 else {}
    server = ls.LitServer(Diffusion(), accelerator="cpu", workers_per_device=workers, **batching)
    server.run(port=port, generate_client_file=False, log_level="warning")


def load(url: str, payload: Any, args: argparse.Namespace) -> float:
    """img/s of `--clients` concurrent clients posting `payload(seed)` to `url`."""
    errors: list[str] = []

    def one_client(index: int) -> None:
        with httpx.Client(timeout=600) as client:
            for n in range(args.requests):
                r = client.post(url, json=payload(1000 * index + n))
                if r.status_code != 200:
                    errors.append(r.text[:200])

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[0]}")
    return args.clients * args.requests / wall


def litserve_body(seed: int) -> dict[str, Any]:
    return {"prompt": PROMPTS[seed % len(PROMPTS)], "seed": seed}


def sdserve_body(seed: int) -> dict[str, Any]:
    return {
        "input": {
            "prompt": PROMPTS[seed % len(PROMPTS)], "width": SIZE, "height": SIZE,
            "num_inference_steps": STEPS, "guidance_scale": 7.5, "seed": seed,
            "scheduler": "K-LMS",
        }
    }  # fmt: skip


def measure_litserve(python: str, model: str, port: int, layout: tuple[int, int],
                     args: argparse.Namespace) -> float:  # fmt: skip
    workers, max_batch = layout
    command = [python, __file__, "--serve-litserve", model, "--port", str(port)]
    command += ["--workers", str(workers), "--max-batch", str(max_batch)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        process.terminate()
        process.wait(timeout=60)


def measure_sdserve(model: str, port: int, work: Path, args: argparse.Namespace) -> float:
    server = start_server(work / "sdserve", port, [model], False)
    try:
        url = f"http://127.0.0.1:{port}/v2/default/runsync"
        for seed in range(2):
            httpx.post(url, json=sdserve_body(seed), timeout=600).raise_for_status()
        return load(url, sdserve_body, args)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litserve-python", help="python of an environment with litserve")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="per client")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--serve-litserve", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_litserve:
        serve_litserve(args.serve_litserve, args.port, args.workers, args.max_batch)
        return
    if not args.litserve_python:
        parser.error("--litserve-python is needed (see the docstring)")

    from tests.models.random_model import build_random_pipeline

    work = Path(tempfile.mkdtemp(prefix="sdserve-litserve-"))
    model = str(work / "tiny-random")
    build_random_pipeline(Path(model), seed=0)
    print(f"{args.clients} clients x {args.requests} requests; {SIZE}x{SIZE}, {STEPS} steps, K-LMS")
    results: dict[str, float] = {}
    for name, layout in LAYOUTS.items():
        results[f"LitServe, {name}"] = measure_litserve(
            args.litserve_python, model, args.port, layout, args
        )
        print(f"LitServe, {name}: {results[f'LitServe, {name}']:.2f} img/s", flush=True)
    ours = measure_sdserve(model, args.port, work, args)
    print(f"sdserve, defaults: {ours:.2f} img/s", flush=True)
    best = max((v, k) for k, v in results.items())
    print(f"sdserve defaults / LitServe's best ({best[1]}): x{ours / best[0]:.2f}")


if __name__ == "__main__":
    main()
