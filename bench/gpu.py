"""GPU speed of SD 1.5 and SDXL (real architectures, random weights): raw, served, compiled.

In one run, on one device: a matrix-product micro-benchmark for the device's achievable peak;
then, for each family, eager: a raw diffusers call (batch 1); a `sdserve serve` at its defaults
answering `/v2/MODEL/runsync` one request at a time, then 16 concurrent requests (dynamic
batching at the device's default `--max-batch`), with the pixel difference between a batched
image and the same seed made alone; a second server with `--max-batch 16` answering the 16
concurrent requests. Then, for the families named by `--compiled` (SD 1.5 by default), a server
of the model compiled (`compile = true` in its models.toml; the worker compiles it at start, and
the worker's log line of how long that took is printed) answering one request at a time and 16
at once. Eager measures of every family come first, so a run cut short keeps the most. Steps
follow issue 11's goals: SD 1.5 at 512x512 and 50 steps, SDXL at 1024x1024 and 30. It prints
each result as it comes, and a table after each family: latency, images per second, the ratio
to the raw eager call, and the share of the FLOP floor reached (the UNet's passes alone, at the
peak measured: one SD 1.5 pass at 512x512 ~0.68 TFLOP, SDXL at 1024x1024 ~6 TFLOP, two passes a
step with classifier-free guidance; text encoders and VAE not counted). Nothing is downloaded:
the pipelines are built from the real configs (bench/full_configs.py), with local tokenizers.
bench/gpu_profile.py says where the time goes.

    python bench/gpu.py                            # on a GPU: about 8.5 min on an H200
    python bench/gpu.py --device cpu --tiny --compiled none   # smoke: tiny models, 128x128
"""

from __future__ import annotations

import argparse
import base64
import functools
import gc
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from overhead import start_server
from PIL import Image

from sdserve.families import FAMILIES, FamilyName

PASS_TFLOP: dict[FamilyName, tuple[int, float]] = {"sd1": (512, 0.68), "sdxl": (1024, 6.0)}
"""One UNet pass at its native size, in TFLOP (issue 11); other sizes scale with the pixels."""
FULL_STEPS: dict[FamilyName, int] = {"sd1": 50, "sdxl": 30}
"""Issue 11's goals: SD 1.5 at 50 steps, SDXL at 30."""
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 42
FULL_ROUNDS, FULL_CONCURRENT = 3, 16
TINY_SIZE, TINY_STEPS, TINY_ROUNDS, TINY_CONCURRENT = 128, 2, 2, 4

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
    steps: dict[FamilyName, int]
    rounds: int
    concurrent: int
    port: int
    compiled: list[FamilyName]
    families: list[FamilyName]
    rows: list[Row] = field(default_factory=list)
    peak_tflops: float = 0.0

    def add(self, row: Row) -> None:
        self.rows.append(row)
        floor = _floor_share(self, row)
        progress(f"{row.family}: {row.what}: latency {row.latency_s:.3f} s, "
                 f"{row.images_per_s:.2f} img/s, floor {floor}% {row.note}")  # fmt: skip


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
             f" {diffusers.__version__}; {kind} models, steps {plan.steps}, {plan.rounds}"
             f" rounds, {plan.concurrent} concurrent")  # fmt: skip
    plan.peak_tflops = _matmul_peak(plan.device)
    progress(f"matmul peak: {plan.peak_tflops:.1f} TFLOP/s")
    try:
        with tempfile.TemporaryDirectory(prefix="sdserve-gpu-bench-") as scratch:
            for family in plan.families:
                _eager(plan, Path(scratch), family)
                _print_table(plan)
            for family in [each for each in plan.families if each in plan.compiled]:
                _compiled(plan, Path(scratch), family)
                _print_table(plan)
    except KeyboardInterrupt:
        _print_table(plan)
        raise


def _parse_args() -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny random models, 128x128 (the API's smallest), 2 steps: a smoke check",
    )
    parser.add_argument(
        "--steps", type=int, help=f"default {FULL_STEPS} by family; tiny {TINY_STEPS}"
    )
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
        "--compiled",
        type=_families,
        default=["sd1"],
        help="families also measured compiled, or none (default sd1: compiling takes minutes,"
        " 188 s for SD 1.5 on an H200, and SDXL's would take the run past 8 minutes)",
    )
    args = parser.parse_args()
    size = {family: TINY_SIZE if args.tiny else FAMILIES[family].size for family in args.families}
    steps = {
        family: args.steps or (TINY_STEPS if args.tiny else FULL_STEPS[family])
        for family in args.families
    }
    return Plan(
        device=args.device,
        tiny=args.tiny,
        size=size,
        steps=steps,
        rounds=args.rounds or (TINY_ROUNDS if args.tiny else FULL_ROUNDS),
        concurrent=args.concurrent or (TINY_CONCURRENT if args.tiny else FULL_CONCURRENT),
        port=args.port,
        compiled=args.compiled,
        families=args.families,
    )


def _families(text: str) -> list[FamilyName]:
    if text == "none":
        return []
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


def _eager(plan: Plan, root: Path, family: FamilyName) -> None:
    """A family's eager measures. All families' come before any compiled model's (the longest
    to start), so a run cut short keeps the most."""
    folder = root / family
    started = time.perf_counter()
    build_model(folder, family, plan.device, plan.tiny)
    progress(f"{family}: built in {time.perf_counter() - started:.1f} s")
    _raw(plan, family, folder)
    _free(plan.device)
    with _server(plan, root, family, compiled=False, options=[]) as client:
        _one_at_a_time(plan, client, family, "runsync eager")
        alone = _image(client, _runsync(client, family, _body(plan, family)))
        _runsync_burst(plan, client, family, family, 2)  # batch shapes warmed, untimed
        answers = _concurrent(plan, client, family, family, "batched, eager, default max-batch")
        _pixel_difference(family, client, alone, answers[0])
    options = ["--max-batch", str(plan.concurrent)]
    with _server(plan, root, family, compiled=False, options=options) as client:
        _runsync(client, family, _body(plan, family))  # warm-up
        _concurrent(plan, client, family, family, f"batched, eager, max-batch {plan.concurrent}")


def _compiled(plan: Plan, root: Path, family: FamilyName) -> None:
    """The family compiled: its server's start loads and compiles it (the worker's warm-up
    compiles batches of 1 and 2 images, then batches of any size reuse the graphs)."""
    options = ["--max-batch", str(plan.concurrent)]
    with _server(plan, root, family, compiled=True, options=options) as client:
        model = f"{family}-compiled"
        _one_at_a_time(plan, client, family, "runsync compiled", model)
        _concurrent(plan, client, family, model, f"batched, compiled, max-batch {plan.concurrent}")


def build_model(path: Path, family: FamilyName, device: str, tiny: bool) -> None:
    """Save a random-weight pipeline of `family` at `path`: sdserve's tiny test model, or the
    real architecture (full_configs.py) in the dtype the server would load it in."""
    if tiny:
        from tests.models.random_model import build_random_family

        build_random_family(path, family, seed=0)
        return
    from full_configs import build_full_family

    build_full_family(path, family, device, _dtype(path, family, device))
    _free(device)


def load_raw(folder: Path, family: FamilyName, device: str) -> Any:
    """diffusers' own pipeline of the model at `folder`, in the dtype the server would use."""
    from diffusers import AutoPipelineForText2Image

    dtype = _dtype(folder, family, device)
    pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype(folder: Path, family: FamilyName, device: str) -> Any:
    from sdserve.engine.pipelines import model_dtype
    from sdserve.registry import ModelSpec

    return model_dtype(ModelSpec(name=family, source=str(folder), family=family), device)


def _floor_tflop(plan: Plan, family: FamilyName) -> float | None:
    """The UNet's TFLOP for one image: steps x 2 passes (guidance) x one pass's."""
    if plan.tiny:
        return None
    native, tflop = PASS_TFLOP[family]
    return plan.steps[family] * 2 * tflop * (plan.size[family] / native) ** 2


def _floor_share(plan: Plan, row: Row) -> str:
    if row.floor_tflop is None:
        return "-"
    return f"{100 * row.floor_tflop * row.images_per_s / plan.peak_tflops:.1f}"


def _raw(plan: Plan, family: FamilyName, folder: Path) -> None:
    """A raw diffusers call, as the server would make it: its dtype, sampler and guidance."""
    import torch

    from sdserve.engine.schedulers import make_scheduler

    rules = FAMILIES[family]
    pipe = load_raw(folder, family, plan.device)
    size, steps = plan.size[family], plan.steps[family]

    def call() -> float:
        started = time.perf_counter()
        pipe.scheduler = make_scheduler(rules.scheduler, pipe.scheduler.config, family)
        pipe(prompt=PROMPT, negative_prompt="", width=size, height=size,
             num_inference_steps=steps, guidance_scale=rules.guidance_scale,
             generator=torch.Generator(plan.device).manual_seed(SEED))  # fmt: skip
        return time.perf_counter() - started

    progress(f"{family}: raw eager, {size}x{size}, {steps} steps, {pipe.dtype}: warm-up"
             f" {call():.2f} s")  # fmt: skip
    _rounds(plan, family, "raw diffusers eager", call)


def _rounds(plan: Plan, family: FamilyName, what: str, call: Callable[[], float]) -> None:
    times = []
    for index in range(plan.rounds):
        times.append(call())
        progress(f"{family}: {what}: round {index + 1}/{plan.rounds} {times[-1]:.3f} s")
    latency = statistics.median(times)
    plan.add(Row(family, what, latency, 1 / latency, _floor_tflop(plan, family)))


def _models_file(root: Path, family: FamilyName, compiled: bool) -> Path:
    name = f"{family}-compiled" if compiled else family
    lines = [f"[models.{name}]", f'source = "{root / family}"']
    if compiled:
        lines.append("compile = true")
    path = root / f"models-{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _body(plan: Plan, family: FamilyName, seed: int = SEED) -> dict[str, Any]:
    size = plan.size[family]
    return {"input": {"prompt": PROMPT, "width": size, "height": size,
                      "num_inference_steps": plan.steps[family], "seed": seed}}  # fmt: skip


def _runsync(client: httpx.Client, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The finished job's answer; its `_seconds` the time the call took."""
    from sdserve.api.runpod_protocol import MAX_WAIT_MS

    started = time.perf_counter()
    answer: dict[str, Any] = client.post(
        f"/v2/{model}/runsync", params={"wait": MAX_WAIT_MS}, json=body
    ).json()
    if answer.get("status") != "COMPLETED":
        raise SystemExit(f"/v2/{model}/runsync answered {answer}")
    answer["_seconds"] = time.perf_counter() - started
    return answer


def _seconds(client: httpx.Client, model: str, body: dict[str, Any]) -> float:
    return float(_runsync(client, model, body)["_seconds"])


@contextmanager
def _server(
    plan: Plan, root: Path, family: FamilyName, compiled: bool, options: list[str]
) -> Iterator[httpx.Client]:
    started = time.perf_counter()
    name = f"{family}-compiled" if compiled else family
    data = root / f"data-{name}{''.join(options).replace('--', '-')}"
    server = start_server(data, plan.port, [], nsfw_check=False, endpoint=name,
                          options=["--models-file", str(_models_file(root, family, compiled)),
                                   "--device", plan.device, *options],
                          timeout_s=600 if compiled else 180)  # fmt: skip
    work = "load, compile" if compiled else "load"
    progress(f"{family}: server of {name} ({' '.join(options) or 'defaults'}; {work}) up in"
             f" {time.perf_counter() - started:.1f} s")  # fmt: skip
    for line in (data / "server.log").read_text(errors="replace").splitlines():
        if f"compiled {name} in" in line:  # the worker's warm-up, as it logged it
            progress(f"{family}: worker log: {line.split(': ', 1)[-1]}")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{plan.port}", timeout=None) as client:
            yield client
    finally:
        server.terminate()
        server.wait(timeout=60)
        _free(plan.device)


def _one_at_a_time(
    plan: Plan, client: httpx.Client, family: FamilyName, what: str, model: str | None = None
) -> None:
    body = _body(plan, family)
    first = _seconds(client, model or family, body)  # untimed: the first call's allocations
    progress(f"{family}: {what}: first request {first:.2f} s")
    _rounds(plan, family, what, functools.partial(_seconds, client, model or family, body))
    plan.rows[-1].note = f"first request {first:.2f} s"


def _concurrent(
    plan: Plan, client: httpx.Client, family: FamilyName, model: str, what: str
) -> list[dict[str, Any]]:
    started = time.perf_counter()
    answers = _runsync_burst(plan, client, family, model, plan.concurrent)
    wall = time.perf_counter() - started
    latency = statistics.median(answer["_seconds"] for answer in answers)
    plan.add(Row(family, f"{plan.concurrent} concurrent, {what}", latency,
                 plan.concurrent / wall, _floor_tflop(plan, family)))  # fmt: skip
    return answers


def _runsync_burst(
    plan: Plan, client: httpx.Client, family: FamilyName, model: str, count: int
) -> list[dict[str, Any]]:
    """`count` requests (seeds SEED, SEED + 1, ...) sent at once; their answers in seed order."""
    with ThreadPoolExecutor(count) as pool:
        futures = [
            pool.submit(_runsync, client, model, _body(plan, family, SEED + index))
            for index in range(count)
        ]
        return [future.result() for future in futures]


def _image(client: httpx.Client, answer: dict[str, Any]) -> np.ndarray:
    image = str(answer["output"][0]["image"])
    data = client.get(image).content if image.startswith("http") else base64.b64decode(image)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _pixel_difference(
    family: FamilyName, client: httpx.Client, alone: np.ndarray, batched: dict[str, Any]
) -> None:
    """How far the seed's image made in a batch is from the same seed's made alone (issue 11:
    the README's promise of how closely a batched image reproduces)."""
    difference = np.abs(_image(client, batched) - alone)
    progress(f"{family}: seed {SEED} batched vs alone: max {int(difference.max())} levels,"
             f" mean {float(difference.mean()):.3f}")  # fmt: skip


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _print_table(plan: Plan) -> None:
    baseline = {row.family: row.latency_s for row in plan.rows if row.what.startswith("raw")}
    line = "{:<6} {:<48} {:>10} {:>8} {:>8} {:>8}  {}"
    say()
    say(f"matmul peak {plan.peak_tflops:.1f} TFLOP/s; floor share = UNet FLOPs per image x"
        " img/s / peak")  # fmt: skip
    say(line.format("family", "configuration", "latency s", "img/s", "vs raw", "floor %", ""))
    for row in plan.rows:
        speedup = (
            f"{baseline[row.family] * row.images_per_s:.2f}x" if row.family in baseline else "-"
        )
        say(line.format(row.family, row.what, f"{row.latency_s:.3f}",
                        f"{row.images_per_s:.2f}", speedup, _floor_share(plan, row),
                        row.note))  # fmt: skip
    say("vs raw: img/s over the raw eager call's (1 / its latency)")
    say()


if __name__ == "__main__":
    # The tiny random models are test fixtures (tests/models): import them from this checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
