"""Overhead of serving: the same request as a raw diffusers call and through /runsync.

Starts `sdserve serve` on loopback, runs the same request (model, size, steps, seed,
scheduler) alternately in-process and through the server, and prints the median
ratio server/raw measured in this one run. Goal: <= 1.05 for 20 steps at 256x256.

    python bench/overhead.py [--steps 20] [--size 256] [--rounds 5] [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

# The tiny random models are test fixtures (tests/models): import them from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def start_server(
    data_dir: Path,
    port: int,
    models: Sequence[str],
    nsfw_check: bool,
    endpoint: str = "default",
    options: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start `sdserve serve` with a `--model` per item of `models` (and `options`); return
    once `endpoint`'s health counts a worker. Its output goes to `data_dir`/server.log."""
    cmd = [
        sys.executable,
        "-m",
        "sdserve",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *options,
    ]
    for model in models:
        cmd += ["--model", model]
    # The raw call runs no safety check; by default neither does the server, so both do the
    # same work. --nsfw-check measures the served path with it.
    env = {**os.environ, "SDSERVE_NSFW_CHECK": "true" if nsfw_check else "false"}
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/v2/{endpoint}/health").json()
            workers = health["workers"]
            if workers["idle"] + workers["running"]:
                return process
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(0.5)
    process.kill()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise SystemExit(f"server did not start; the end of its log ({log}):\n{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--model", help="diffusers folder (default: a tiny random SD model built for the run)"
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between calls")
    parser.add_argument(
        "--nsfw-check", action="store_true", help="let the server run its NSFW check too"
    )
    parser.add_argument(
        "--server-options", default="", help="options of `sdserve serve`, e.g. '--workers 2'"
    )
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="sdserve-bench-"))
    model_dir = args.model
    if model_dir is None:
        # Not the demo model: it draws at 64x64 whatever the size asked, so the raw call would
        # not do the same work; this one draws at full size, like real SD models.
        from tests.models.random_model import build_random_pipeline

        model_dir = str(data_dir / "tiny-random")
        build_random_pipeline(Path(model_dir), seed=0)
    raw_s, served_s = served_and_raw(
        data_dir, args.port, model_dir, args.size, args.steps, args.rounds, args.pause,
        args.nsfw_check, args.server_options.split(),
    )  # fmt: skip
    check = "with" if args.nsfw_check else "without"
    print(f"request: {args.steps} steps, {args.size}x{args.size}, K-LMS, seed 42")
    print(f"server runs {check} its NSFW check (the raw call has none)")
    print(f"raw pipeline call  median {raw_s * 1000:8.1f} ms over {args.rounds} rounds")
    print(f"server /runsync    median {served_s * 1000:8.1f} ms over {args.rounds} rounds")
    print(f"ratio served/raw   {served_s / raw_s:.3f}  (goal <= 1.05)")


def served_and_raw(
    data_dir: Path,
    port: int,
    model_dir: str,
    size: int,
    steps: int,
    rounds: int,
    pause: float,
    nsfw_check: bool = False,
    options: Sequence[str] = (),
) -> tuple[float, float]:
    """Median seconds of the same request as a raw in-process diffusers call and through a
    server started on `port` (with its default settings, and `options`), alternating, after
    one warm-up."""
    import torch
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    server = start_server(data_dir, port, [model_dir], nsfw_check, options=options)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        prompt = "a red circle on a blue background"
        body = {
            "input": {
                "prompt": prompt, "width": size, "height": size, "num_inference_steps": steps,
                "guidance_scale": 7.5, "seed": 42, "scheduler": "K-LMS",
            }
        }  # fmt: skip
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)

        def raw() -> float:
            started = time.perf_counter()
            pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
            pipe(
                prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(42),
            )  # fmt: skip
            return time.perf_counter() - started

        def served() -> float:
            started = time.perf_counter()
            answer = client.post("/v2/default/runsync", json=body).json()
            assert answer["status"] == "COMPLETED", answer
            return time.perf_counter() - started

        raw(), served()  # warm-up
        raw_times, served_times = [], []
        for _ in range(rounds):
            # A pause between calls lets the other process's idle torch threads stop spinning:
            # on a small CPU they would otherwise steal cores from the call being measured.
            time.sleep(pause)
            raw_times.append(raw())
            time.sleep(pause)
            served_times.append(served())
        return statistics.median(raw_times), statistics.median(served_times)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
