"""What every image store offers; `factory.open_image_store` picks one from `--storage`."""

from __future__ import annotations

from typing import Protocol


class ImageStore(Protocol):
    """Output PNGs keyed `<job_id>/<index>.png`; a re-run overwrites, never duplicates."""

    def put(self, job_id: str, index: int, data: bytes) -> str:
        """Store image `index` of a job and return its key."""
        ...

    def read(self, key: str) -> bytes | None:
        """The bytes of a key, or None when it is malformed or gone."""
        ...

    def delete_job(self, job_id: str) -> None:
        """Delete every image of a job (nothing happens when there are none)."""
        ...

    def direct_url(self, key: str, expires_at: float) -> str | None:
        """A link clients fetch the image from directly, valid until `expires_at` (a Unix time),
        or None when the store has none and the API serves the image itself."""
        ...


def image_key(job_id: str, index: int) -> str:
    return f"{job_id}/{index}.png"
