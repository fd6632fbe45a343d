"""Running one job through a JobRunner and reading its PNGs back as third-party tools do."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable

from PIL import Image
from sd_parsers import ParserManager
from sd_parsers.data import PromptInfo

from sdserve.canonical import GenerationRequest
from sdserve.engine.generate import GeneratedImage
from sdserve.jobs.models import Job
from sdserve.jobs.sqlite_store import SqliteJobStore
from sdserve.storage.local import LocalImageStore
from sdserve.worker.runner import Generate, JobRunner


def run_job(
    store: SqliteJobStore, images: LocalImageStore, request: GenerationRequest, generate: Generate
) -> Job:
    """Queue `request`, run it as a worker would, and return the finished job."""
    job_id = uuid.uuid4().hex
    job = Job(
        id=job_id, owner="alice", endpoint="default", request=request, input={},
        created_at=time.time(),
    )  # fmt: skip
    store.create(job)
    claimed = store.claim("worker-test", time.time())
    assert claimed is not None and claimed.id == job_id
    runner = JobRunner(store, images, generate)
    try:
        runner.run(claimed)
    finally:
        runner.close()
    done = store.get(job_id)
    assert done is not None
    return done


GenerateOne = Callable[[GenerationRequest, Callable[[int, int], None]], list[GeneratedImage]]


def one_by_one(generate: GenerateOne) -> Generate:
    """A runner's Generate from a stand-in engine that makes one request's images."""

    def run(
        requests: list[GenerationRequest],
        on_step: Callable[[int, int], None],
        on_preview: object = None,
    ) -> list[list[GeneratedImage]]:
        return [generate(request, on_step) for request in requests]

    return run


def read_parameters(images: LocalImageStore, key: str) -> PromptInfo:
    """The PNG's generation parameters as sd-parsers reads them."""
    data = images.read(key)
    assert data is not None
    info = ParserManager().parse(Image.open(io.BytesIO(data)))
    assert info is not None, "sd-parsers found no parameters"
    return info
