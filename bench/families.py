"""Overhead of serving, per model family: each family's request raw and through /runsync.

Builds a tiny random-weight model of every family sdserve serves (or of those `--families`
names), starts one `sdserve serve` on loopback serving them all, then per family alternates the
same request (size, steps, seed, the family's default guidance and sampler, one image) as an
in-process diffusers call and through `/v2/FAMILY/runsync`, and prints the median seconds per
image of each and their ratio runsync/raw, as it goes and as a final table.

`--full-size` (for GPUs) builds random-weight pipelines of the real architectures instead
(bench/full_configs.py: SD 1.5, SD 2.1 768-v, SDXL base, SD3 medium, FLUX.1 dev and schnell),
in the server's dtype, each at its family's default size and steps. Together they would take
~95 GB of disk in half precision, so each is built, served by a server of its own, measured
and deleted before the next. Models are built under the temporary folder (TMPDIR).

    python bench/families.py [--families sd1,sdxl] [--size 128] [--steps 8] [--rounds 5]
    python bench/families.py --full-size [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import httpx
from overhead import start_server

from sdserve.families import FAMILIES, FamilyName
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.requests import check_size
from sdserve.registry import ModelSpec

PROMPT = "a red circle on a blue background"
SEED = 42
TINY_SIZE, TINY_STEPS, TINY_ROUNDS = 128, 8, 5
FULL_ROUNDS = 3
FULL_ROUNDS_BY_FAMILY: dict[FamilyName, int] = {"flux-dev": 2}
"""FLUX.1 dev at 1024x1024 and 28 steps should take ~6 s an image on an H200 (an estimate, not
yet measured): two rounds are meant to keep the whole --full-size run under 8 minutes there."""

say = functools.partial(print, flush=True)


class BenchFailed(Exception):
    """A family could not be measured; the message says why."""


@dataclass(frozen=True)
class Plan:
    """What to measure for one family."""

    family: FamilyName
    size: int
    steps: int
    rounds: int


@dataclass(frozen=True)
class Result:
    plan: Plan
    raw_s: float | None = None
    """Median seconds per image of the raw diffusers call."""
    served_s: float | None = None
    """Median seconds per image through /runsync."""
    error: str | None = None


def main() -> None:
    args, plans = _parse_args()
    import diffusers
    import torch
    import transformers

    from sdserve.engine.pipelines import resolve_device

    # Saving and loading draw progress bars that would bury the measurements.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    device = resolve_device("auto")
    # The server's worker gets the same number (--threads): the raw call and the served one
    # then compute alike. Only CPU workers use it.
    torch.set_num_threads(args.threads)
    pause = args.pause if args.pause is not None else (1.0 if device == "cpu" else 0.0)
    kind = "full-size random-weight" if args.full_size else "tiny random"
    say(f"{kind} models on {device}, {args.threads} torch threads, server without NSFW check")
    # One server for all tiny models; full-size ones do not fit the disk together.
    groups = [[plan] for plan in plans] if args.full_size else [plans]
    results: list[Result] = []
    for group in groups:
        results += _run_group(group, args, device, pause)
    _print_table(results)


def _parse_args() -> tuple[argparse.Namespace, list[Plan]]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--families",
        type=_family_list,
        default=list(FAMILIES),
        help=f"comma-separated, of {', '.join(FAMILIES)} (default: all)",
    )
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="random weights in the real architectures (for GPUs)",
    )
    parser.add_argument("--size", type=int, help=f"default {TINY_SIZE}; full-size: the family's")
    parser.add_argument("--steps", type=int, help=f"default {TINY_STEPS}; full-size: the family's")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"default {TINY_ROUNDS}; full-size: {FULL_ROUNDS}, "
        + ", ".join(f"{family}: {n}" for family, n in FULL_ROUNDS_BY_FAMILY.items()),
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--pause", type=float, help="seconds between calls (default: 1 on a CPU, 0 on a GPU)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch CPU threads of the raw call and of the server's worker (default: torch's)",
    )
    args = parser.parse_args()
    plans = [_plan(family, args) for family in args.families]
    for plan in plans:
        spec = ModelSpec(name=plan.family, source="bench", family=plan.family)
        try:
            check_size("--size", plan.size, spec)
        except InvalidInput as error:
            parser.error(str(error))
    return args, plans


def _family_list(text: str) -> list[FamilyName]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in get_args(FamilyName)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"families are {', '.join(FAMILIES)} (got {', '.join(unknown) or 'none'})"
        )
    return names  # type: ignore[return-value]  # checked against FamilyName above


def _plan(family: FamilyName, args: argparse.Namespace) -> Plan:
    if not args.full_size:
        return Plan(family, args.size or TINY_SIZE, args.steps or TINY_STEPS,
                    args.rounds or TINY_ROUNDS)  # fmt: skip
    rounds = args.rounds or FULL_ROUNDS_BY_FAMILY.get(family, FULL_ROUNDS)
    defaults = FAMILIES[family]
    return Plan(family, args.size or defaults.size, args.steps or defaults.steps, rounds)


def _run_group(
    plans: list[Plan], args: argparse.Namespace, device: str, pause: float
) -> list[Result]:
    """Build the plans' models, serve them from one server, measure each, delete them."""
    with tempfile.TemporaryDirectory(prefix="sdserve-families-") as scratch:
        root = Path(scratch)
        for plan in plans:
            started = time.perf_counter()
            _build(root / plan.family, plan.family, args.full_size, device)
            say(f"{plan.family}: built in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        server = start_server(
            root / "data",
            args.port,
            [f"{plan.family}={root / plan.family}" for plan in plans],
            nsfw_check=False,
            endpoint=plans[0].family,
            options=["--threads", str(args.threads)],
        )
        say(f"server up in {time.perf_counter() - started:.1f} s")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=None) as client:
                return [_measure_safely(plan, root, client, device, pause) for plan in plans]
        finally:
            server.terminate()
            server.wait(timeout=30)


def _build(path: Path, family: FamilyName, full_size: bool, device: str) -> None:
    if not full_size:
        from tests.models.random_model import build_random_family

        build_random_family(path, family, seed=0)
        return
    from full_configs import build_full_family

    from sdserve.engine.pipelines import model_dtype

    dtype = model_dtype(ModelSpec(name=family, source=str(path), family=family), device)
    build_full_family(path, family, device, dtype)
    _free_memory(device)


def _measure_safely(
    plan: Plan, root: Path, client: httpx.Client, device: str, pause: float
) -> Result:
    """Measure one family; a failure is reported and the next family still runs."""
    try:
        return _measure(plan, root / plan.family, client, device, pause)
    except Exception as error:
        say(f"{plan.family}: FAILED: {type(error).__name__}: {error}")
        return Result(plan, error=f"{type(error).__name__}: {error}")
    finally:
        _free_memory(device)


def _measure(plan: Plan, folder: Path, client: httpx.Client, device: str, pause: float) -> Result:
    import torch
    from diffusers import AutoPipelineForText2Image

    from sdserve.api.runpod_protocol import MAX_WAIT_MS
    from sdserve.engine.pipelines import model_dtype
    from sdserve.engine.schedulers import make_scheduler

    family = FAMILIES[plan.family]
    spec = ModelSpec(name=plan.family, source=str(folder)).inspected()
    if spec.family != plan.family:
        raise BenchFailed(f"sdserve reads the model as {spec.family}, not {plan.family}")
    # The server's own choice of dtype (float32 on a CPU, half precision on a GPU).
    dtype = model_dtype(spec, device)
    pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    # What the worker passes: sdserve sends a negative prompt ("" by default) where the family
    # takes one, and guidance_scale always (FLUX.1 schnell's pipeline ignores it).
    prompts: dict[str, Any] = {"prompt": PROMPT}
    if family.negative_prompt:
        prompts["negative_prompt"] = ""
    body = {
        "input": {
            "prompt": PROMPT, "width": plan.size, "height": plan.size,
            "num_inference_steps": plan.steps, "guidance_scale": family.guidance_scale,
            "seed": SEED, "scheduler": family.scheduler,
        }
    }  # fmt: skip

    def raw() -> float:
        started = time.perf_counter()
        # A fresh scheduler per image, made as the worker makes it.
        pipe.scheduler = make_scheduler(family.scheduler, pipe.scheduler.config, family.name)
        pipe(
            **prompts, width=plan.size, height=plan.size, num_inference_steps=plan.steps,
            guidance_scale=family.guidance_scale,
            generator=torch.Generator(device).manual_seed(SEED),
        )  # fmt: skip
        return time.perf_counter() - started

    def served() -> float:
        started = time.perf_counter()
        path = f"/v2/{plan.family}/runsync"
        answer = client.post(path, params={"wait": MAX_WAIT_MS}, json=body).json()
        if answer.get("status") != "COMPLETED":
            raise BenchFailed(f"{path} answered {answer}")
        return time.perf_counter() - started

    request = f"{plan.size}x{plan.size}, {plan.steps} steps, {family.scheduler}, {dtype}"
    say(f"{plan.family}: {request}; warm-up raw {raw():.3f} s, runsync {served():.3f} s")
    raw_times, served_times = [], []
    for index in range(plan.rounds):
        # A pause between calls lets the other process's idle torch threads stop spinning:
        # on a small CPU they would otherwise steal cores from the call being measured.
        time.sleep(pause)
        raw_times.append(raw())
        time.sleep(pause)
        served_times.append(served())
        say(f"{plan.family}: round {index + 1}/{plan.rounds}:"
            f" raw {raw_times[-1]:.3f} s, runsync {served_times[-1]:.3f} s")  # fmt: skip
    result = Result(plan, statistics.median(raw_times), statistics.median(served_times))
    say(f"{plan.family}: {_summary(result)}")
    return result


def _summary(result: Result) -> str:
    assert result.raw_s is not None and result.served_s is not None
    return (
        f"median raw {result.raw_s:.3f} s, runsync {result.served_s:.3f} s per image,"
        f" runsync/raw {result.served_s / result.raw_s:.3f}"
    )


def _free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _print_table(results: list[Result]) -> None:
    row = "{:<13} {:>9} {:>6} {:>7} {:>10} {:>14} {:>12}"
    say()
    say(row.format("family", "size", "steps", "rounds", "raw s/img", "runsync s/img",
                   "runsync/raw"))  # fmt: skip
    for result in results:
        plan = result.plan
        size = f"{plan.size}x{plan.size}"
        if result.raw_s is None or result.served_s is None:
            say(row.format(plan.family, size, plan.steps, plan.rounds, "-", "-", "FAILED"))
            continue
        ratio = f"{result.served_s / result.raw_s:.3f}"
        say(row.format(plan.family, size, plan.steps, plan.rounds, f"{result.raw_s:.3f}",
                       f"{result.served_s:.3f}", ratio))  # fmt: skip
    for result in results:
        if result.error:
            say(f"{result.plan.family} failed: {result.error}")


if __name__ == "__main__":
    main()
