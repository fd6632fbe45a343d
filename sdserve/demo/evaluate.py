"""Score the demo model: `python -m sdserve.demo.evaluate`.

Draws fresh scenes (shape, colours, size, position, seed: none taken from training's stream),
generates each one's caption through the same registry, pipelines and engine as the server, and
reads every image back with `score.read`. Five runs: at the model's default guidance, without
guidance (1.0), at the hosted APIs' usual 7.5 (with the model's guidance cutoff, and without it),
and at the default with the scene's own shape ("a red star") as the negative prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer

from sdserve.canonical import GenerationRequest
from sdserve.demo.scenes import Scene, sample_scene
from sdserve.demo.score import read
from sdserve.engine.generate import EngineOptions, generate
from sdserve.engine.pipelines import PipelineSet, load_pipelines
from sdserve.registry import DEFAULT_MODEL, DEMO_GUIDANCE, NATIVE_SIZE, load_registry

EVALUATION_SEED = 20261122
"""Training draws from seeds near 0; these scenes and image seeds are new to the model."""


@dataclass(frozen=True)
class Scores:
    background: float
    colour: float
    shape: float

    def line(self, label: str) -> str:
        return (
            f"{label:<34} background {self.background:6.1%}   colour {self.colour:6.1%}"
            f"   shape {self.shape:6.1%}"
        )


def fresh_scenes(count: int, seed: int = EVALUATION_SEED) -> list[tuple[Scene, int]]:
    """`count` scenes, each with the seed to draw it with."""
    rng = random.Random(seed)
    return [(sample_scene(rng), rng.randrange(2**32)) for _ in range(count)]


def score(
    pipes: PipelineSet,
    scenes: list[tuple[Scene, int]],
    guidance: float,
    steps: int,
    size: int,
    negative_prompt: bool = False,
) -> Scores:
    hits = {"background": 0, "colour": 0, "shape": 0}
    for scene, seed in scenes:
        request = GenerationRequest(
            model=DEFAULT_MODEL,
            prompt=scene.caption(),
            negative_prompt=f"a {scene.colour} {scene.shape}" if negative_prompt else "",
            width=size,
            height=size,
            guidance_scale=guidance,
            num_inference_steps=steps,
            num_outputs=1,
            prompt_strength=0.8,
            scheduler="K-LMS",
            seed=seed,
        )
        [made] = generate(pipes, request, lambda step, total: None, EngineOptions(nsfw_check=False))
        reading = read(made.image)
        hits["background"] += reading.background == scene.background
        hits["colour"] += reading.colour == scene.colour
        hits["shape"] += reading.shape == scene.shape
    return Scores(**{name: hit / len(scenes) for name, hit in hits.items()})


def main(
    model: Annotated[
        str | None, typer.Option(help="A model folder to score instead of the shipped one.")
    ] = None,
    count: Annotated[int, typer.Option(help="Scenes per run.")] = 200,
    steps: Annotated[int, typer.Option(help="Denoising steps per image.")] = 25,
    size: Annotated[int, typer.Option(help="Requested width and height.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
) -> None:
    """Print the demo model's scores on freshly drawn scenes."""
    spec = load_registry(None, [] if model is None else [str(Path(model))]).resolve(DEFAULT_MODEL)
    assert spec is not None
    pipes = load_pipelines(spec.model_copy(update={"native_size": NATIVE_SIZE}), device)
    scenes = fresh_scenes(count)
    guidance = DEMO_GUIDANCE
    print(f"{count} fresh scenes, {steps} steps of K-LMS, {size}x{size}, model {spec.source}")
    print(score(pipes, scenes, guidance, steps, size).line(f"guidance {guidance} (its default)"))
    print(score(pipes, scenes, 1.0, steps, size).line("guidance 1.0 (none)"))
    print(score(pipes, scenes, 7.5, steps, size).line("guidance 7.5"))
    uncut = replace(pipes, spec=pipes.spec.model_copy(update={"guidance_cutoff": None}))
    print(score(uncut, scenes, 7.5, steps, size).line("guidance 7.5, no cutoff"))
    negative = score(pipes, scenes, guidance, steps, size, negative_prompt=True)
    print(negative.line(f"guidance {guidance}, negative prompt"))


if __name__ == "__main__":
    typer.run(main)
