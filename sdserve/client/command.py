"""The `sdserve generate` command: options in, PNG files and their seeds out."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:  # the rest loads when the command runs: `serve` and --help need none of it
    from sdserve.api.runpod_protocol import RunPodInput
    from sdserve.client.progress import StepProgress
    from sdserve.client.request import Maker, Output

OutputFile = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="PNG file to write, or a folder to write in; with two images or more, out.png"
        " becomes out-1.png, out-2.png, ... [default: PROMPT-WORDS-SEED.png, here].",
    ),
]
NumImages = Annotated[
    int, typer.Option("--num-images", "-n", help="Images to make; image i has seed SEED+i-1.")
]
Size = Annotated[
    str | None, typer.Option(metavar="WxH", help="--width and --height at once: 512x768, or 512.")
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        "--sampler",
        help="DDIM, DDPM, DPM-M, DPM-S, EULER-A, EULER-D, HEUN, IPNDM, KDPM2-A, KDPM2-D, PNDM or"
        " K-LMS (any case) [default: the model's].",
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        metavar="NAME|SOURCE",
        help="With --url, the endpoint: a model name or alias the server serves [default:"
        " default]. Without, a model SOURCE: a hub id, a diffusers folder or a .safetensors"
        " file [default: what `serve` would serve: SDSERVE_MODEL, else the built-in demo model].",
    ),
]
Lora = Annotated[
    str | None,
    typer.Option(
        metavar="NAME|FILE",
        help="A LoRA the server has (GET /v1/loras), by name; without --url, one of"
        " SDSERVE_LORA_DIR or a .safetensors file.",
    ),
]
InitImage = Annotated[
    Path | None,
    typer.Option(
        exists=True, dir_okay=False, help="Image to start from (image-to-image, inpainting)."
    ),
]
Mask = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        help="Inpainting mask over --init-image: white is repainted, black and transparent kept.",
    ),
]
Url = Annotated[
    str | None,
    typer.Option(
        envvar="SDSERVE_URL",
        metavar="http://HOST:PORT",
        help="A running sdserve server to generate on, through its RunPod API [default: none:"
        " generate in this process].",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="SDSERVE_API_KEY", help="The server's API key, if it needs one."),
]
Device = Annotated[
    str | None,
    typer.Option(help="Without --url: auto, cpu, cuda or cuda:N [default: auto]."),
]
_MODELS_DEFAULT = "[default: the model's]"


def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What to draw.")],
    output: OutputFile = None,
    num_images: NumImages = 1,
    negative_prompt: Annotated[str, typer.Option(help="What to keep out of the image.")] = "",
    width: Annotated[int | None, typer.Option(help=_MODELS_DEFAULT)] = None,
    height: Annotated[int | None, typer.Option(help=_MODELS_DEFAULT)] = None,
    size: Size = None,
    steps: Annotated[int | None, typer.Option(help=f"Denoising steps {_MODELS_DEFAULT}.")] = None,
    guidance: Annotated[
        float | None, typer.Option(help=f"Guidance (CFG) scale {_MODELS_DEFAULT}.")
    ] = None,
    scheduler: Scheduler = None,
    seed: Annotated[int | None, typer.Option(help="[default: random]")] = None,
    model: Model = None,
    lora: Lora = None,
    lora_scale: Annotated[
        float | None, typer.Option(help="How strongly the LoRA applies, 0 to 2 [default: 1].")
    ] = None,
    init_image: InitImage = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="How far to depart from --init-image: 0 keeps it, 1 ignores it [default: 0.8]."
        ),
    ] = None,
    mask: Mask = None,
    url: Url = None,
    api_key: ApiKey = None,
    device: Device = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace files that exist.")
    ] = False,
) -> None:
    """Generate images from PROMPT into PNG files that carry their parameters (as A1111
    writes them), and print each file's name and seed: through a running server with --url
    (or SDSERVE_URL), else in this process, with no server.

    Exit codes: 0 written, 1 the generation failed, 2 bad options, 130 interrupted.
    """
    from sdserve.client.request import BadInput, GenerationFailed, Maker, parse_size

    try:
        if size is not None:
            if width is not None or height is not None:
                raise BadInput(["--size: give --size or --width and --height, not both"])
            width, height = parse_size(size)
        if url and device:
            raise BadInput(["--device: only without --url (the server has its own)"])
        fields: dict[str, object] = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "width": width,
            "height": height,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "scheduler": scheduler,
            "seed": seed,
            "num_outputs": num_images,
            "lora": lora,
            "lora_scale": lora_scale,
            "prompt_strength": strength,
        }
        maker = Maker(url=url, api_key=api_key, model=model, device=device)
        _generate(fields, init_image, mask, output, overwrite, maker)
    except BadInput as exc:
        _fail(str(exc), 2)
    except GenerationFailed as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _generate(
    fields: dict[str, object],
    init_image: Path | None,
    mask: Path | None,
    output: Path | None,
    overwrite: bool,
    maker: Maker,
) -> None:
    from sdserve.client.files import output_paths, refuse_existing, write_images
    from sdserve.client.progress import StepProgress
    from sdserve.client.request import checked_input, init_image_input, mask_input
    from sdserve.jobs.requests import RANDOM_SEED_BOUND

    if fields["seed"] is None:  # drawn here, as a server would, to name the files before
        fields["seed"] = secrets.randbelow(RANDOM_SEED_BOUND)
    fields["init_image"] = None if init_image is None else init_image_input(init_image)
    fields["mask"] = None if mask is None else mask_input(mask)
    wire = checked_input(fields)
    assert wire.seed is not None
    paths = output_paths(output, wire.prompt, wire.seed, wire.num_outputs)
    if not overwrite:
        refuse_existing(paths)
    with StepProgress() as progress:
        outputs = _make(maker, wire, progress)
    write_images(paths, outputs, overwrite)
    for path, made in zip(paths, outputs, strict=True):
        typer.echo(f"{path}  seed {made.seed}")


def _make(maker: Maker, wire: RunPodInput, progress: StepProgress) -> list[Output]:
    if maker.url:
        from sdserve.client.remote import generate_remote
        from sdserve.registry import DEFAULT_MODEL

        endpoint = maker.model or DEFAULT_MODEL
        return generate_remote(maker.url, maker.api_key, endpoint, wire, progress)
    from sdserve.client.local import generate_here

    return generate_here(maker.model, maker.device, wire, progress)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
