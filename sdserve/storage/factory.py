"""Opening the image store a `--storage` value names."""

from __future__ import annotations

from pathlib import Path

from sdserve.storage.base import ImageStore
from sdserve.storage.local import LocalImageStore


def open_image_store(storage: str | None, images_dir: Path) -> ImageStore:
    """The store a `--storage` value names: `s3://bucket[/prefix]?endpoint_url=...&region=...`,
    or None for the local folder `images_dir`."""
    if storage is None:
        return LocalImageStore(images_dir)
    # boto3 loads only where S3 is used.
    from sdserve.storage.s3 import S3ImageStore

    store = S3ImageStore.from_url(storage)
    store.ensure_bucket()  # fail at start, not at the first image, when it cannot be reached
    return store
