"""A deterministic reading of a demo image: its background colour, shape colour and shape.

Pixels are named by the nearest colour of the demo palette. The background is the commonest
name on the image's border; the shape is the largest connected region of any other name; its
kind follows from two ratios of that region: its area over its convex hull's (a star is far from
convex) and over its bounding box's (square 1, circle pi/4, triangle 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from sdserve.demo.scenes import CANVAS, COLOURS

_NAMES = sorted(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], dtype=np.float32)
BORDER = 2
"""Pixels of the border that shapes never reach."""
STAR_BELOW_SOLIDITY = 0.8
SQUARE_ABOVE_EXTENT = 0.9
CIRCLE_ABOVE_EXTENT = 0.65
MIN_SHAPE_PIXELS = 12


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None
    """None when no shape was found."""
    shape: str | None


def colour_names(image: Image.Image) -> np.ndarray[Any, Any]:
    """The palette index of every pixel, at the demo's native size."""
    pixels = np.asarray(image.convert("RGB").resize((CANVAS, CANVAS)), dtype=np.float32)
    distances = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(axis=-1)
    return np.asarray(distances.argmin(axis=-1))


def read(image: Image.Image) -> Reading:
    names = colour_names(image)
    border = np.concatenate(
        [names[:BORDER].ravel(), names[-BORDER:].ravel(),
         names[:, :BORDER].ravel(), names[:, -BORDER:].ravel()]
    )  # fmt: skip
    background = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    regions, count = ndimage.label(names != background)
    if count == 0:
        return Reading(_NAMES[background], None, None)
    sizes = ndimage.sum_labels(np.ones_like(regions), regions, index=range(1, count + 1))
    region = regions == int(np.argmax(sizes)) + 1
    if region.sum() < MIN_SHAPE_PIXELS:
        return Reading(_NAMES[background], None, None)
    # The colour from the region's inside: its anti-aliased edge blends two colours.
    inside = ndimage.binary_erosion(region)
    colour_pixels = names[inside] if inside.any() else names[region]
    colour = int(np.bincount(colour_pixels, minlength=len(_NAMES)).argmax())
    return Reading(_NAMES[background], _NAMES[colour], classify_shape(region))


def classify_shape(region: np.ndarray[Any, Any]) -> str:
    ys, xs = np.nonzero(region)
    area = float(len(xs))
    # Each pixel is a unit square: its four corners bound it exactly.
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1)
                              for dy in (0, 1)])  # fmt: skip
    try:
        hull_area = float(ConvexHull(corners).volume)
    except QhullError:  # a line of pixels: no area
        return "square"
    box_area = float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    if area / hull_area < STAR_BELOW_SOLIDITY:
        return "star"
    extent = area / box_area
    if extent > SQUARE_ABOVE_EXTENT:
        return "square"
    if extent > CIRCLE_ABOVE_EXTENT:
        return "circle"
    return "triangle"
