"""How far an image made in a batch differs from the same seed made alone (issue 11, part 1).

For each family's tiny random-weight model (real diffusers classes, no download), it makes N
images one call at a time (one generator each, seeds S..S+N-1) and then in ONE call with
`num_images_per_prompt=N` and the same N generators, and prints, per image, the largest and the
mean absolute difference in 8-bit levels, and the time of each way with their ratio:

    python bench/batch_equivalence.py [--families sd1,sdxl] [--images 4] [--size 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# The tiny random models are test fixtures (tests/models): import them from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import DiffusionPipeline

from sdserve.families import FAMILIES
from tests.models.random_model import build_random_family


def _levels(images: object) -> np.ndarray:
    """The pipeline's float images as 8-bit levels, as the server's PNGs store them."""
    array = np.asarray(images)
    return np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.int16)


def _call(pipe: DiffusionPipeline, seeds: list[int], args: argparse.Namespace) -> np.ndarray:
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    output = pipe(
        prompt="a red circle on a blue background",
        num_images_per_prompt=len(seeds),
        generator=generators if len(generators) > 1 else generators[0],
        num_inference_steps=args.steps,
        width=args.size,
        height=args.size,
        output_type="np",
    )
    return _levels(output.images)


def measure(family: str, scratch: Path, args: argparse.Namespace) -> None:
    path = scratch / family
    build_random_family(path, family, seed=0)  # type: ignore[arg-type]
    pipe = DiffusionPipeline.from_pretrained(path)
    seeds = [args.seed + i for i in range(args.images)]
    _call(pipe, seeds[:1], args)  # warm-up
    started = time.perf_counter()
    alone = np.concatenate([_call(pipe, [seed], args) for seed in seeds])
    solo_s = time.perf_counter() - started
    started = time.perf_counter()
    together = _call(pipe, seeds, args)
    batch_s = time.perf_counter() - started
    difference = np.abs(alone - together)
    per_image = ", ".join(f"{int(d.max())}/{d.mean():.3f}" for d in difference)
    print(
        f"{family:13} max {int(difference.max()):3d} levels, mean {difference.mean():.4f};"
        f" per image max/mean: {per_image};"
        f" {args.images} alone {solo_s:.2f} s, batched {batch_s:.2f} s"
        f" (batched/alone {batch_s / solo_s:.2f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"batched vs alone: {args.images} images, {args.size}x{args.size}, {args.steps} steps,"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="sdserve-batch-") as scratch:
        for family in args.families.split(","):
            measure(family, Path(scratch), args)


if __name__ == "__main__":
    main()
