"""The cheap preview: a latent pixel's channels projected to a colour, per family."""

from __future__ import annotations

import numpy as np
import torch

from sdserve.engine.previews import previews


def test_a_known_latent_gives_the_family_s_colour() -> None:
    latents = torch.zeros(2, 4, 3, 5)
    latents[0, 0] = 1.0  # SD 1.x's first channel: warm light grey
    latents[1, 3] = 1.0  # its fourth: dark blue-ish (every factor negative, blue the most)
    first, second = (np.asarray(image) for image in previews(latents, "sd1"))
    assert first.shape == (3, 5, 3)
    assert first[0, 0].tolist() == [172, 157, 169]  # (1 + factor) * 127.5, rounded
    assert second[0, 0].tolist() == [100, 94, 36]
    sdxl = np.asarray(previews(latents, "sdxl")[0])
    assert sdxl[0, 0].tolist() != first[0, 0].tolist()  # each family its own factors


def test_sixteen_channel_families_and_other_latents() -> None:
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    for family in ("sd3", "flux-dev"):
        (image,) = previews(latents, family)
        assert image.size == (4, 4) and image.mode == "RGB"
    # A tiny test model's 8 channels: its first three, stretched to the full range.
    (image,) = previews(torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(1)), "sd1")
    levels = np.asarray(image)
    assert levels.min() == 0 and levels.max() == 255
