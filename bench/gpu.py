"""GPU speed of SD 1.5 and SDXL (real architectures, random weights): raw, served, compiled.

In one run, on one device: a matrix-product micro-benchmark for the device's achievable peak;
then per family a raw diffusers eager call (batch 1); `/v2/MODEL/runsync` one request at a time
through a `sdserve serve` holding the model eager and compiled (`compile = true` in its
models.toml); then a second server with dynamic batching (`--max-batch 16 --batch-wait-ms 50`)
answering 16 concurrent requests. It prints progress as it goes, then a table: latency, images
per second, the ratio to the raw eager call, and the share of the FLOP floor reached (the UNet's
passes alone, at the peak measured: one SD 1.5 pass at 512x512 ~0.68 TFLOP, SDXL at 1024x1024
~6 TFLOP, two passes a step with classifier-free guidance; text encoders and VAE not counted).

Two servers, as a batching server waits `--batch-wait-ms` after the first job for company,
which would add that wait to every batch-1 latency. Nothing is downloaded: the pipelines are
built from the real configs (bench/full_configs.py), with local tokenizers.

    python bench/gpu.py                            # for a GPU: must finish in < 8 min on an H100
    python bench/gpu.py --device cpu --tiny --no-compiled   # smoke: tiny models, 128x128, 2 steps
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from overhead import start_server

from sdserve.families import FAMILIES, FamilyName

PASS_TFLOP: dict[FamilyName, tuple[int, float]] = {"sd1": (512, 0.68), "sdxl": (1024, 6.0)}
"""One UNet pass at its native size, in TFLOP (issue 11); other sizes scale with the pixels."""
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 42
FULL_STEPS, FULL_ROUNDS, FULL_CONCURRENT = 20, 3, 16
TINY_SIZE, TINY_STEPS, TINY_ROUNDS, TINY_CONCURRENT = 128, 2, 2, 2
BATCH_WAIT_MS = 50

say = functools.partial(print, flush=True)
_started = time.perf_counter()


def progress(message: str) -> None:
    say(f"[{time.perf_counter() - _started:6.1f} s] {message}")


@dataclass
class Row:
    """One measured configuration of one family."""

    family: FamilyName
    what: str
    latency_s: float
    """Median seconds from request to image (the burst's median for concurrent requests)."""
    images_per_s: float
    floor_tflop: float | None
    """The UNet's FLOPs for one image, in TFLOP (None: not known for tiny models)."""
    note: str = ""


@dataclass
class Plan:
    device: str
    tiny: bool
    size: dict[FamilyName, int]
    steps: int
    rounds: int
    concurrent: int
    port: int
    compiled: bool
    families: list[FamilyName]
    rows: list[Row] = field(default_factory=list)
    peak_tflops: float = 0.0


def main() -> None:
    plan = _parse_args()
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --tiny for a smoke check")
    gpu = torch.cuda.get_device_name(0) if plan.device.startswith("cuda") else "CPU"
    kind = "tiny" if plan.tiny else "full-size"
    progress(f"device {plan.device} ({gpu}), torch {torch.__version__}, diffusers"
             f" {diffusers.__version__}; {kind} models, {plan.steps} steps, {plan.rounds}"
             f" rounds, {plan.concurrent} concurrent")  # fmt: skip
    plan.peak_tflops = _matmul_peak(plan.device)
    progress(f"matmul peak: {plan.peak_tflops:.1f} TFLOP/s")
    with tempfile.TemporaryDirectory(prefix="sdserve-gpu-bench-") as scratch:
        root = Path(scratch)
        for family in plan.families:
            started = time.perf_counter()
            _build(root / family, family, plan)
            progress(f"{family}: built in {time.perf_counter() - started:.1f} s")
        for family in plan.families:
            _raw(plan, family, root / family)
            _free(plan.device)
        _served_one_at_a_time(plan, root)
        _served_concurrently(plan, root)
    _print_table(plan)


def _parse_args() -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny random models, 128x128 (the API's smallest), 2 steps: a smoke check",
    )
    parser.add_argument("--steps", type=int, help=f"default {FULL_STEPS}; tiny {TINY_STEPS}")
    parser.add_argument("--rounds", type=int, help=f"default {FULL_ROUNDS}; tiny {TINY_ROUNDS}")
    parser.add_argument(
        "--concurrent", type=int, help=f"default {FULL_CONCURRENT}; tiny {TINY_CONCURRENT}"
    )
    parser.add_argument(
        "--families",
        type=_families,
        default=list(PASS_TFLOP),
        help="comma-separated, of sd1, sdxl (default both)",
    )
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument(
        "--no-compiled",
        dest="compiled",
        action="store_false",
        help="skip the compiled model (on a CPU, compiling takes minutes per model)",
    )
    args = parser.parse_args()
    size = {family: TINY_SIZE if args.tiny else FAMILIES[family].size for family in args.families}
    return Plan(
        device=args.device,
        tiny=args.tiny,
        size=size,
        steps=args.steps or (TINY_STEPS if args.tiny else FULL_STEPS),
        rounds=args.rounds or (TINY_ROUNDS if args.tiny else FULL_ROUNDS),
        concurrent=args.concurrent or (TINY_CONCURRENT if args.tiny else FULL_CONCURRENT),
        port=args.port,
        compiled=args.compiled,
        families=args.families,
    )


def _families(text: str) -> list[FamilyName]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in PASS_TFLOP for name in names):
        raise argparse.ArgumentTypeError(f"families are sd1 and sdxl (got {text!r})")
    return [family for family in PASS_TFLOP if family in names]


def _matmul_peak(device: str) -> float:
    """TFLOP/s of large matrix products in the dtype the UNets run in (half on CUDA)."""
    import torch

    cuda = device.startswith("cuda")
    n, dtype = (8192, torch.float16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run(times: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(times):
            torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    run(3)
    times = 20 if cuda else 5
    return 2 * n**3 * times / run(times) / 1e12


def _build(path: Path, family: FamilyName, plan: Plan) -> None:
    if plan.tiny:
        from tests.models.random_model import build_random_family

        build_random_family(path, family, seed=0)
        return
    from full_configs import build_full_family

    from sdserve.engine.pipelines import model_dtype
    from sdserve.registry import ModelSpec

    dtype = model_dtype(ModelSpec(name=family, source=str(path), family=family), plan.device)
    build_full_family(path, family, plan.device, dtype)
    _free(plan.device)


def _floor_tflop(plan: Plan, family: FamilyName) -> float | None:
    """The UNet's TFLOP for one image: steps x 2 passes (guidance) x one pass's."""
    if plan.tiny:
        return None
    native, tflop = PASS_TFLOP[family]
    return plan.steps * 2 * tflop * (plan.size[family] / native) ** 2


def _raw(plan: Plan, family: FamilyName, folder: Path) -> None:
    """A raw diffusers call, as the server would make it: its dtype, sampler and guidance."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from sdserve.engine.pipelines import model_dtype
    from sdserve.engine.schedulers import make_scheduler
    from sdserve.registry import ModelSpec

    rules = FAMILIES[family]
    dtype = model_dtype(ModelSpec(name=family, source=str(folder), family=family), plan.device)
    pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=dtype).to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    size = plan.size[family]

    def call() -> float:
        started = time.perf_counter()
        pipe.scheduler = make_scheduler(rules.scheduler, pipe.scheduler.config, family)
        pipe(prompt=PROMPT, negative_prompt="", width=size, height=size,
             num_inference_steps=plan.steps, guidance_scale=rules.guidance_scale,
             generator=torch.Generator(plan.device).manual_seed(SEED))  # fmt: skip
        return time.perf_counter() - started

    progress(f"{family}: raw eager, {size}x{size}, {plan.steps} steps, {dtype}: warm-up"
             f" {call():.2f} s")  # fmt: skip
    _rounds(plan, family, "raw diffusers eager", call)


def _rounds(plan: Plan, family: FamilyName, what: str, call: Callable[[], float]) -> None:
    times = []
    for index in range(plan.rounds):
        times.append(call())
        progress(f"{family}: {what}: round {index + 1}/{plan.rounds} {times[-1]:.3f} s")
    latency = statistics.median(times)
    plan.rows.append(Row(family, what, latency, 1 / latency, _floor_tflop(plan, family)))


def _models_file(root: Path, families: list[FamilyName], compiled: bool) -> Path:
    lines = []
    for family in families:
        lines += [f"[models.{family}]", f'source = "{root / family}"', ""]
        if compiled:
            lines += [f"[models.{family}-compiled]", f'source = "{root / family}"',
                      "compile = true", ""]  # fmt: skip
    path = root / ("models-compiled.toml" if compiled else "models.toml")
    path.write_text("\n".join(lines))
    return path


def _body(plan: Plan, family: FamilyName, seed: int = SEED) -> dict[str, Any]:
    size = plan.size[family]
    return {"input": {"prompt": PROMPT, "width": size, "height": size,
                      "num_inference_steps": plan.steps, "seed": seed}}  # fmt: skip


def _runsync(client: httpx.Client, model: str, body: dict[str, Any]) -> float:
    from sdserve.api.runpod_protocol import MAX_WAIT_MS

    started = time.perf_counter()
    answer = client.post(f"/v2/{model}/runsync", params={"wait": MAX_WAIT_MS}, json=body).json()
    if answer.get("status") != "COMPLETED":
        raise SystemExit(f"/v2/{model}/runsync answered {answer}")
    return time.perf_counter() - started


def _server(plan: Plan, root: Path, name: str, models: Path, options: list[str]) -> Any:
    started = time.perf_counter()
    server = start_server(root / f"data-{name}", plan.port, [], nsfw_check=False,
                          endpoint=plan.families[0],
                          options=["--models-file", str(models), "--device", plan.device,
                                   *options])  # fmt: skip
    progress(f"server ({name}) up in {time.perf_counter() - started:.1f} s")
    return server


def _served_one_at_a_time(plan: Plan, root: Path) -> None:
    server = _server(plan, root, "batch-1", _models_file(root, plan.families, plan.compiled), [])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{plan.port}", timeout=None) as client:
            for family in plan.families:
                models: list[tuple[str, str]] = [(family, "runsync eager")]
                if plan.compiled:
                    models.append((f"{family}-compiled", "runsync compiled"))
                for model, what in models:
                    body = _body(plan, family)
                    first = _runsync(client, model, body)
                    # The compiled model's first request loads and compiles it; the eager one's
                    # loads it. Untimed below.
                    work = "load, compile" if "compiled" in what else "load"
                    progress(f"{family}: {what}: first request ({work}) {first:.1f} s")
                    _rounds(plan, family, what, functools.partial(_runsync, client, model, body))
                    plan.rows[-1].note = f"first request {first:.1f} s"
    finally:
        _stop(server)


def _served_concurrently(plan: Plan, root: Path) -> None:
    options = ["--max-batch", str(plan.concurrent), "--batch-wait-ms", str(BATCH_WAIT_MS)]
    server = _server(plan, root, "batching", _models_file(root, plan.families, False), options)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{plan.port}", timeout=None) as client:
            for family in plan.families:
                _runsync(client, family, _body(plan, family))  # loads the model
                _burst(plan, client, family, 2)  # batch shapes warmed, untimed
                latency, wall = _burst(plan, client, family, plan.concurrent)
                what = f"{plan.concurrent} concurrent, batched, eager"
                progress(f"{family}: {what}: {wall:.2f} s for the burst, median latency"
                         f" {latency:.2f} s, {plan.concurrent / wall:.2f} img/s")  # fmt: skip
                plan.rows.append(Row(family, what, latency, plan.concurrent / wall,
                                     _floor_tflop(plan, family)))  # fmt: skip
    finally:
        _stop(server)


def _burst(plan: Plan, client: httpx.Client, family: FamilyName, count: int) -> tuple[float, float]:
    """`count` requests (seeds differ) sent at once: their median latency and the burst's wall."""
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        futures = [
            pool.submit(_runsync, client, family, _body(plan, family, SEED + index))
            for index in range(count)
        ]
        latencies = [future.result() for future in futures]
    return statistics.median(latencies), time.perf_counter() - started


def _stop(server: Any) -> None:
    server.terminate()
    server.wait(timeout=60)


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _print_table(plan: Plan) -> None:
    baseline = {row.family: row.latency_s for row in plan.rows if row.what.startswith("raw")}
    line = "{:<6} {:<32} {:>10} {:>8} {:>9} {:>9}  {}"
    say()
    say(f"matmul peak {plan.peak_tflops:.1f} TFLOP/s; floor share = UNet FLOPs per image x"
        " img/s / peak")  # fmt: skip
    say(line.format("family", "configuration", "latency s", "img/s", "vs raw", "floor %", ""))
    for row in plan.rows:
        speedup = f"{baseline[row.family] * row.images_per_s:.2f}x"
        floor = (
            f"{100 * row.floor_tflop * row.images_per_s / plan.peak_tflops:.1f}"
            if row.floor_tflop is not None
            else "-"
        )
        say(line.format(row.family, row.what, f"{row.latency_s:.3f}",
                        f"{row.images_per_s:.2f}", speedup, floor, row.note))  # fmt: skip
    say("vs raw: img/s over the raw eager call's (1 / its latency)")


if __name__ == "__main__":
    # The tiny random models are test fixtures (tests/models): import them from this checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
