"""Where `sdserve generate` writes its images, and the writing, which never overwrites unasked."""

from __future__ import annotations

import re
from pathlib import Path

from sdserve.client.request import BadInput, Output

_WORD = re.compile(r"[a-z0-9]+")
_SLUG_CHARS = 48
"""The most characters of the prompt a default file name takes."""


def output_paths(output: Path | None, prompt: str, seed: int, count: int) -> list[Path]:
    """The files of `count` images: `output` (or `<prompt words>-<seed>.png`, in `output`
    when it is a folder) for one image; for more, `-1`, `-2`, ... before its `.png`."""
    default = Path(f"{_slug(prompt)}-{seed}.png")
    if output is None:
        base = default
    elif output.is_dir():
        base = output / default
    elif output.suffix.lower() == ".png":
        base = output
    else:
        raise BadInput([f"--output: must name a .png file or a folder (got {str(output)!r})"])
    if count == 1:
        return [base]
    return [base.with_name(f"{base.stem}-{index}{base.suffix}") for index in range(1, count + 1)]


def refuse_existing(paths: list[Path]) -> None:
    """Stop before generating when a file to write exists (unless `--overwrite`)."""
    taken = [str(path) for path in paths if path.exists()]
    if taken:
        raise BadInput(
            [f"--output: {', '.join(taken)} already exists; choose another or pass --overwrite"]
        )


def write_images(paths: list[Path], outputs: list[Output], overwrite: bool) -> None:
    """Each image to its file, creating folders; an existing file is replaced only if
    `overwrite` (one made meanwhile by another program is not)."""
    for path, output in zip(paths, outputs, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("wb" if overwrite else "xb") as file:
                file.write(output.png)
        except FileExistsError:
            raise BadInput([f"--output: {path} appeared while generating; not replaced"]) from None


def _slug(prompt: str) -> str:
    words = _WORD.findall(prompt.lower())
    slug = ""
    for word in words:
        if len(slug) + len(word) + 1 > _SLUG_CHARS:
            break
        slug = f"{slug}-{word}" if slug else word
    return slug or (words[0][:_SLUG_CHARS] if words else "sdserve")
