"""Input images: accepted as http(s) URL, data URI or bare base64, normalised to PNG bytes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io

import httpx
from PIL import Image, ImageOps

from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.outbound import BadStatus, TooLarge, UrlPolicy, fetch_url

_MAX_PIXELS = 64_000_000
"""Larger images are refused from their header, before decoding."""

# That check replaces Pillow's own decompression-bomb guard, which refuses big images inside
# `Image.open`, before their size can be reported: every untrusted image is opened here.
Image.MAX_IMAGE_PIXELS = None


async def fetch_bytes(
    field: str, url: str, timeout_s: float, max_bytes: int, urls: UrlPolicy
) -> bytes:
    """Download `url` through the SSRF guard, refusing bodies over `max_bytes` and downloads
    longer than `timeout_s` in total."""
    try:
        return await fetch_url(urls, url, timeout_s, max_bytes)
    except TooLarge:
        raise InvalidInput(field, f"image at this URL is larger than {max_bytes} bytes") from None
    except BadStatus as answer:
        # Only a server the guard allowed answers at all: its status tells a port scanner
        # nothing it could not learn itself, and tells the client what to fix.
        raise InvalidInput(field, f"could not fetch the image from this URL ({answer})") from None
    except (httpx.HTTPError, httpx.InvalidURL, TimeoutError):
        # One message whatever went wrong: a refused address, a closed port and a slow
        # server must look alike, or this call becomes a port scanner.
        raise InvalidInput(field, "could not fetch the image from this URL") from None


def decode_base64(field: str, value: str) -> bytes:
    """Bytes of a data URI (`data:image/png;base64,...`) or of bare base64 text."""
    payload = value.partition(",")[2] if value.startswith("data:") else value
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            field, "must be an http(s) URL, a data URI or base64-encoded image bytes"
        ) from None


async def read_image(
    field: str, value: str | bytes, timeout_s: float, max_bytes: int, urls: UrlPolicy
) -> bytes:
    """The bytes of an image given in any accepted form, or uploaded as raw bytes (decoded
    later, by `open_image`)."""
    if isinstance(value, bytes):
        return value
    if value.startswith(("http://", "https://")):
        return await fetch_bytes(field, value, timeout_s, max_bytes, urls)
    # Off the event loop: 20 MB of base64 takes a while.
    return await asyncio.to_thread(decode_base64, field, value)


def open_image(field: str, data: bytes) -> Image.Image:
    """Decode image bytes, refusing what is not an image or is absurdly large."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.width * image.height > _MAX_PIXELS:
            raise InvalidInput(
                field,
                f"image is too large ({image.width} x {image.height},"
                f" at most {_MAX_PIXELS} pixels)",
            )
        image.load()
    except InvalidInput:
        raise
    except Exception:
        raise InvalidInput(field, "is not a readable image (PNG, JPEG, WebP, ...)") from None
    return ImageOps.exif_transpose(image)


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_init_image(image: Image.Image, width: int, height: int) -> bytes:
    """The init image as RGB PNG bytes at the requested size."""
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    return to_png(rgb)


def prepare_mask(image: Image.Image, width: int, height: int, invert: bool) -> bytes:
    """The mask as greyscale PNG bytes at the requested size, white = repaint (diffusers)."""
    grey = _flatten_alpha(image).convert("L")
    if grey.size != (width, height):
        grey = grey.resize((width, height), Image.Resampling.NEAREST)
    if invert:
        grey = ImageOps.invert(grey)
    return to_png(grey)


def alpha_mask(field: str, image: Image.Image) -> Image.Image:
    """OpenAI's mask (fully transparent pixels are edited) as a mask with white = repaint."""
    if not _has_alpha(image):
        raise InvalidInput(
            field, "must have an alpha channel: its fully transparent pixels mark the area to edit"
        )
    return image.convert("RGBA").getchannel("A").point(lambda alpha: 255 if alpha == 0 else 0)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _flatten_alpha(image: Image.Image) -> Image.Image:
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba)
    return image
