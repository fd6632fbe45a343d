"""Overhead of serving: the same request as a raw diffusers call and through /runsync.

Starts `sdserve serve` on loopback and runs the same request (model, size, steps, seed,
sampler) three ways in turn: diffusers' own pipeline call in-process, sdserve's engine
(`generate`, the worker's work without the server) in-process, and `/runsync`. Prints the
medians and their ratios, measured in this one run: /runsync over the raw call is issue 11's
goal (<= 1.03 at 20 steps, 256x256); over the engine it is what the server alone costs.

    python bench/overhead.py [--steps 20] [--size 256] [--rounds 5] [--model PATH]
        [--scheduler K-LMS] [--server-options '--workers 1']
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
from dataclasses import dataclass
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
    timeout_s: float = 180,
) -> subprocess.Popen[bytes]:
    """Start `sdserve serve` with a `--model` per item of `models` (and `options`); return
    once `endpoint`'s health counts a worker (within `timeout_s`: a compiled model's warm-up
    comes first). Its output goes to `data_dir`/server.log."""
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
    deadline = time.time() + timeout_s
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


@dataclass(frozen=True)
class Overhead:
    """Median seconds of one request made three ways in one run."""

    raw_s: float
    """diffusers' own pipeline call, in-process, as a user of diffusers writes it."""
    engine_s: float
    """sdserve's engine (`generate`) in-process: the worker's work without the server."""
    served_s: float
    """`/runsync` through the server."""
    served_over_raw: float
    """The median of each round's /runsync over its raw call (rounds share the machine's
    momentary speed, which drifts by more than the effects measured)."""
    served_over_engine: float
    """The same, over the engine's call in-process: what the server alone adds."""

    def report(self) -> str:
        raw, engine, served = self.raw_s, self.engine_s, self.served_s
        return (
            f"raw diffusers call   {raw * 1000:8.1f} ms\n"
            f"sdserve engine       {engine * 1000:8.1f} ms  (x{engine / raw:.3f} the raw call)\n"
            f"server /runsync      {served * 1000:8.1f} ms  (x{served / raw:.3f} the raw call,"
            f" x{served / engine:.3f} the engine in-process)\n"
            f"per round, median:   /runsync over raw x{self.served_over_raw:.3f} (goal <= 1.03),"
            f" over the engine x{self.served_over_engine:.3f}"
        )


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
    parser.add_argument("--scheduler", default="K-LMS", help="sdserve's name of the sampler")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="sdserve-bench-"))
    model_dir = args.model
    if model_dir is None:
        # Not the demo model: it draws at 64x64 whatever the size asked, so the raw call would
        # not do the same work; this one draws at full size, like real SD models.
        from tests.models.random_model import build_random_pipeline

        model_dir = str(data_dir / "tiny-random")
        build_random_pipeline(Path(model_dir), seed=0)
    measured = served_and_raw(
        data_dir, args.port, model_dir, args.size, args.steps, args.rounds, args.pause,
        args.nsfw_check, args.server_options.split(), args.scheduler,
    )  # fmt: skip
    check = "with" if args.nsfw_check else "without"
    print(f"request: {args.steps} steps, {args.size}x{args.size}, {args.scheduler}, seed 42")
    print(f"server runs {check} its NSFW check (the raw call has none); medians of {args.rounds}")
    print(measured.report())


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
    scheduler: str = "K-LMS",
) -> Overhead:
    """Median seconds of the same request as a raw in-process diffusers call, through
    sdserve's engine in-process, and through a server started on `port` (with its default
    settings, and `options`), taking turns, after one warm-up of each."""
    import diffusers
    import torch

    from sdserve.canonical import GenerationRequest
    from sdserve.engine.generate import EngineOptions, generate
    from sdserve.engine.pipelines import load_pipelines
    from sdserve.registry import ModelSpec
    from sdserve.samplers import SAMPLERS

    server = start_server(data_dir, port, [model_dir], nsfw_check, options=options)
    try:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        scheduler_class = getattr(diffusers, SAMPLERS[scheduler].diffusers_class)
        pipes = load_pipelines(ModelSpec(name="default", source=model_dir), "cpu")
        engine_options = EngineOptions(nsfw_check=nsfw_check)
        prompt = "a red circle on a blue background"
        fields = {
            "prompt": prompt, "width": size, "height": size, "num_inference_steps": steps,
            "guidance_scale": 7.5, "seed": 42, "scheduler": scheduler,
        }  # fmt: skip
        request = GenerationRequest(
            model="default", negative_prompt="", num_outputs=1, prompt_strength=0.8, **fields
        )
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)

        def raw() -> float:
            started = time.perf_counter()
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
            pipe(
                prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(42),
            )  # fmt: skip
            return time.perf_counter() - started

        def engine() -> float:
            started = time.perf_counter()
            generate(pipes, request, lambda done, total: None, engine_options)
            return time.perf_counter() - started

        def served() -> float:
            started = time.perf_counter()
            answer = client.post("/v2/default/runsync", json={"input": fields}).json()
            assert answer["status"] == "COMPLETED", answer
            return time.perf_counter() - started

        ways = (raw, engine, served)
        times: list[list[float]] = [[] for _ in ways]
        for way in ways:  # warm-up
            way()
        for round_ in range(rounds):
            # The in-process calls take turns right after /runsync: with a server up, the call
            # that follows it measured slower, and neither way should always be that one.
            for index in (2, 0, 1) if round_ % 2 == 0 else (2, 1, 0):
                # A pause between calls lets the other process's idle torch threads stop
                # spinning: on a small CPU they would otherwise steal cores from the call.
                time.sleep(pause)
                times[index].append(ways[index]())
        raw_s, engine_s, served_s = (statistics.median(taken) for taken in times)
        raws, engines, serveds = times
        return Overhead(
            raw_s, engine_s, served_s,
            statistics.median(s / r for s, r in zip(serveds, raws, strict=True)),
            statistics.median(s / e for s, e in zip(serveds, engines, strict=True)),
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
