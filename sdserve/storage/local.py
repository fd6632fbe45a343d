"""Images in a local folder, one sub-folder per job, overwritten (never duplicated) on re-runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sdserve.storage.base import image_key


class LocalImageStore:
    """Keys look like `<job_id>/<index>.png`; files live under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, job_id: str, index: int, data: bytes) -> str:
        """Write image `index` of a job atomically and return its key."""
        key = image_key(job_id, index)
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return key

    def path(self, key: str) -> Path | None:
        """The file of a key, or None when the key is malformed or the file is gone."""
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def read(self, key: str) -> bytes | None:
        path = self.path(key)
        return None if path is None else path.read_bytes()

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def direct_url(self, key: str, expires_at: float) -> str | None:
        """None: local images are served by the API behind signed links."""
        return None
