"""`sdserve generate` run as a user runs it: a subprocess, through a real server on loopback
(images as signed URLs or as base64) and in-process with no server, written to PNG files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ServerProcess, running_server

KEY = "cli-test-key"
FAST = ["--size", "128", "--steps", "3"]


def sdserve(
    cwd: Path, *args: str, env: dict[str, str] | None = None, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`python PYTHON -m sdserve ARGS` in `cwd`, with no SDSERVE_* setting but those of `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    return subprocess.run(
        [sys.executable, *python, "-m", "sdserve", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _pixels(path: Path) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)


def _parameters(path: Path) -> str:
    with Image.open(path) as image:
        return str(image.info["parameters"])


def unknown_seed(result: subprocess.CompletedProcess[str]) -> int:
    """The random seed the command printed for its one file."""
    return int(result.stdout.split("  seed ")[1])


def _written(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The files the command printed, with their seeds."""
    assert result.returncode == 0, result.stderr
    lines = [line.split("  seed ") for line in result.stdout.splitlines()]
    return {name: int(seed) for name, seed in lines}


@pytest.fixture(scope="module")
def url_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """A server with a key, answering images as signed URLs (its default)."""
    env = {"SDSERVE_API_KEYS": KEY}
    data = tmp_path_factory.mktemp("url-data")
    with running_server(data, ["--model", str(tiny_model)], env) as server:
        yield server


@pytest.fixture(scope="module")
def base64_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """A server with a key, answering images inline as base64."""
    env = {"SDSERVE_API_KEYS": KEY, "SDSERVE_OUTPUT_FORMAT": "base64"}
    data = tmp_path_factory.mktemp("base64-data")
    with running_server(data, ["--model", str(tiny_model)], env) as server:
        yield server


def test_through_a_server_images_are_downloaded_with_their_seeds_and_parameters(
    url_server: ServerProcess, tmp_path: Path
) -> None:
    args = ["generate", "a lighthouse at dusk", "-n", "2", "-o", "out.png", "--seed", "11"]
    # -X importtime lists every module imported: a client of a server loads no torch.
    env = {"SDSERVE_URL": url_server.url, "SDSERVE_API_KEY": KEY}
    result = sdserve(tmp_path, *args, *FAST, env=env, python=("-X", "importtime"))

    assert _written(result) == {"out-1.png": 11, "out-2.png": 12}
    for name, seed in _written(result).items():
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size == (128, 128)
        parameters = _parameters(tmp_path / name)
        assert parameters.startswith("a lighthouse at dusk\n")
        assert f"Seed: {seed}," in parameters and "Steps: 3," in parameters
    assert not (_pixels(tmp_path / "out-1.png") == _pixels(tmp_path / "out-2.png")).all()
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines()}
    assert "sdserve.client.remote" in imported
    assert not imported & {"torch", "diffusers", "transformers", "sdserve.engine"}


def test_the_servers_refusals_name_the_option(url_server: ServerProcess, tmp_path: Path) -> None:
    url = ["--url", url_server.url]
    keyless = sdserve(tmp_path, "generate", "a cat", *FAST, *url)
    assert keyless.returncode == 2
    assert keyless.stderr.startswith("error: --api-key: missing API key")

    too_narrow = sdserve(tmp_path, "generate", "a cat", "--width", "100", *url, "--api-key", KEY)
    assert too_narrow.returncode == 2
    assert "error: --width: must be a multiple of 8 between 128 and" in too_narrow.stderr
    assert "(got 100)" in too_narrow.stderr

    unknown = sdserve(tmp_path, "generate", "a cat", "--model", "nope", *url, "--api-key", KEY)
    assert unknown.returncode == 2
    assert "error: --model: endpoint 'nope' not found; available: default" in unknown.stderr
    for result in (keyless, too_narrow, unknown):
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def _init_and_mask(folder: Path) -> tuple[Path, Path, np.ndarray[Any, Any]]:
    """A green init image, and a mask repainting its centre (white) and keeping the rest."""
    init = Image.new("RGB", (128, 128), (40, 160, 60))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    init.save(folder / "init.png")
    mask.save(folder / "mask.png")
    return folder / "init.png", folder / "mask.png", np.asarray(mask) == 0


def test_a_seed_inpaints_the_same_image_through_a_server_and_in_process(
    base64_server: ServerProcess, tiny_model: Path, tmp_path: Path
) -> None:
    init, mask, kept = _init_and_mask(tmp_path)
    args = ["generate", "a lighthouse at dusk", *FAST, "--seed", "5", "--strength", "0.7"]
    args += ["--init-image", str(init), "--mask", str(mask)]
    served = sdserve(
        tmp_path, *args, "-o", "served.png", "--url", base64_server.url, "--api-key", KEY
    )
    # No --output: the prompt's words and the seed, in the current folder.
    here = sdserve(tmp_path, *args, "--model", str(tiny_model), "--device", "cpu")

    assert _written(served) == {"served.png": 5}
    assert _written(here) == {"a-lighthouse-at-dusk-5.png": 5}
    served_png, here_png = tmp_path / "served.png", tmp_path / "a-lighthouse-at-dusk-5.png"
    image = _pixels(served_png)
    assert (image == _pixels(here_png)).all()
    assert (image[kept] == _pixels(init)[kept]).all()  # black pixels of the mask are kept
    assert not (image[~kept] == _pixels(init)[~kept]).all()  # white ones repainted
    assert _parameters(served_png) == _parameters(here_png)
    assert "Denoising strength: 0.7" in _parameters(here_png)


def _blue(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (p[..., 2] > 150) & (p[..., 0] < 110) & (p[..., 1] < 150)


def _red(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (p[..., 0] > 150) & (p[..., 1] < 110) & (p[..., 2] < 110)


def test_with_no_server_the_demo_model_draws_the_prompt(tmp_path: Path) -> None:
    prompt = "a red circle on a blue background"
    options = ["--size", "128", "--steps", "12", "--seed", "0", "-o", "a.png"]
    result = sdserve(tmp_path, "generate", prompt, *options)

    assert _written(result) == {"a.png": 0}
    p = _pixels(tmp_path / "a.png")
    assert p.shape == (128, 128, 3)
    border = np.concatenate([p[:4].reshape(-1, 3), p[-4:].reshape(-1, 3),
                             p[:, :4].reshape(-1, 3), p[:, -4:].reshape(-1, 3)])  # fmt: skip
    assert _blue(border).mean() > 0.8
    assert _red(p)[54:74, 54:74].mean() > 0.8
    parameters = _parameters(tmp_path / "a.png")
    assert parameters.startswith(f"{prompt}\n") and "Seed: 0," in parameters
    assert "Steps: 12," in parameters and "Model: default" in parameters
    assert "warning" not in result.stderr

    # A prompt of no word it knows still makes an image, and says why it follows none of it.
    unknown = sdserve(tmp_path, "generate", "a photo of a cat", *FAST, "-o", "cat.png")
    assert _written(unknown) == {"cat.png": unknown_seed(unknown)}
    assert "warning: the demo model knows no word of this prompt" in unknown.stderr


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--steps", "0"], "error: --steps: Input should be greater than or equal to 1 (got 0)"),
        (["--scheduler", "fastest"], "error: --scheduler: must name a sampler: one of DDIM, DDPM,"),
        (["--size", "12x"], "error: --size: must be WIDTHxHEIGHT"),
        (["--width", "100"], "error: --width: must be a multiple of 8 between 128 and"),
        (["-o", "out.jpg"], "error: --output: must name a .png file or a folder"),
    ],
)
def test_bad_options_stop_with_a_line_naming_them(
    tmp_path: Path, options: list[str], expected: str
) -> None:
    result = sdserve(tmp_path, "generate", "a red circle", *options)

    assert result.returncode == 2
    assert result.stderr.startswith(expected), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_bad_option_is_named_at_once(tmp_path: Path) -> None:
    result = sdserve(tmp_path, "generate", "a cat", "--steps", "0", "--guidance", "50")
    assert result.returncode == 2
    assert "--steps: " in result.stderr and "--guidance: " in result.stderr


def test_an_existing_file_is_kept_unless_overwrite_is_given(tmp_path: Path) -> None:
    (tmp_path / "out-2.png").write_bytes(b"mine")
    result = sdserve(tmp_path, "generate", "a red circle", "-n", "2", "-o", "out.png")

    assert result.returncode == 2
    assert "out-2.png already exists; choose another or pass --overwrite" in result.stderr
    assert (tmp_path / "out-2.png").read_bytes() == b"mine"
    assert not (tmp_path / "out-1.png").exists()
