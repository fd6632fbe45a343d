"""Cheap previews of images while they form: the denoising latents projected to RGB.

A1111's "approx cheap" preview: no VAE pass, no extra weights, one small matrix per family that
maps a latent pixel's channels to an RGB colour (published per VAE: the SD 1.x and SDXL factors
as ComfyUI lists them, SD 3's from Stability AI's reference code, FLUX.1's from ComfyUI). A
preview is the latent grid's size (1/8 of the image's side) and shows the composition and
colours forming, not the final image. A model whose latents have another channel count (the
tests' tiny random models) gets its first three channels, stretched to the full range.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdserve.families import FamilyName

# One row per latent channel: its contribution to (R, G, B), on values in [-1, 1].
_SD1 = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SD3 = (
    (-0.0645, 0.0177, 0.1052),
    (0.0028, 0.0312, 0.0650),
    (0.1848, 0.0762, 0.0360),
    (0.0944, 0.0360, 0.0889),
    (0.0897, 0.0506, -0.0364),
    (-0.0020, 0.1203, 0.0284),
    (0.0855, 0.0118, 0.0283),
    (-0.0539, 0.0658, 0.1047),
    (-0.0057, 0.0116, 0.0700),
    (-0.0412, 0.0281, -0.0039),
    (0.1106, 0.1171, 0.1220),
    (-0.0248, 0.0682, -0.0481),
    (0.0815, 0.0846, 0.1207),
    (-0.0120, -0.0055, -0.0867),
    (-0.0749, -0.0634, -0.0456),
    (-0.1418, -0.1457, -0.1259),
)
_FLUX = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)

_FACTORS: dict[FamilyName, tuple[tuple[float, float, float], ...]] = {
    "sd1": _SD1,
    "sd2": _SD1,
    "sdxl": _SDXL,
    "sd3": _SD3,
    "flux-dev": _FLUX,
    "flux-schnell": _FLUX,
}


def latent_grid(latents: torch.Tensor, pipe: Any, width: int, height: int) -> torch.Tensor:
    """`latents` as a (batch, channels, rows, columns) grid: FLUX's pipelines keep them packed
    as sequences of 2x2 patches during denoising."""
    if latents.ndim == 4:
        return latents
    unpack = getattr(pipe, "_unpack_latents", None)
    if latents.ndim == 3 and unpack is not None:
        grid: torch.Tensor = unpack(latents, height, width, pipe.vae_scale_factor)
        return grid
    raise ValueError(f"latents of shape {tuple(latents.shape)} have no grid to preview")


def previews(latents: torch.Tensor, family: FamilyName) -> list[Image.Image]:
    """One RGB preview per image of the (batch, channels, rows, columns) `latents`."""
    grid = latents.detach().to("cpu", torch.float32)
    factors = _FACTORS[family]
    if grid.shape[1] == len(factors):
        rgb = torch.einsum("bchw,cr->bhwr", grid, torch.tensor(factors))
        levels = ((rgb.clamp(-1, 1) + 1) * 127.5).round()
    else:
        rgb = grid[:, :3].permute(0, 2, 3, 1)
        if rgb.shape[-1] < 3:
            rgb = rgb[..., :1].expand(*rgb.shape[:-1], 3)
        low = rgb.amin(dim=(1, 2, 3), keepdim=True)
        high = rgb.amax(dim=(1, 2, 3), keepdim=True)
        levels = ((rgb - low) / (high - low).clamp(min=1e-6) * 255).round()
    pixels = levels.to(torch.uint8).numpy()
    return [Image.fromarray(image, "RGB") for image in pixels]
