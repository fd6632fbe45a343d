"""The worker's engine call: the request's model, run under the server's settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdserve.canonical import GenerationRequest
from sdserve.engine.cache import PipelineCache
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.sqlite_store import SqliteJobStore
from sdserve.registry import load_registry
from sdserve.settings import Settings
from sdserve.storage.local import LocalImageStore
from sdserve.worker.process import models_to_prepare, request_runner
from tests.engine.helpers import make_request, save_random_lora
from tests.helpers import decode_png

from .helpers import read_parameters, run_job


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache("cpu")


@pytest.fixture(scope="module")
def loras(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    save_random_lora(tiny_model, folder, "ink")
    return folder


class Worker:
    """Runs requests as a worker with the given settings does."""

    def __init__(
        self,
        store: SqliteJobStore,
        images: LocalImageStore,
        cache: PipelineCache,
        **settings: object,
    ) -> None:
        self.store, self.images = store, images
        self.settings = Settings.model_validate(settings)
        registry = load_registry(None, self.settings.model)
        self.generate = request_runner(self.settings, registry, cache)

    def run(self, request: GenerationRequest) -> Job:
        return run_job(self.store, self.images, request, self.generate)

    def pixels(self, request: GenerationRequest) -> np.ndarray:
        job = self.run(request)
        assert job.status == JobStatus.COMPLETED, job.error
        data = self.images.read(job.outputs[0].key)
        assert data is not None
        return decode_png(data)


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def worker_for(
    store: SqliteJobStore,
    images: LocalImageStore,
    cache: PipelineCache,
    tiny_model: Path,
    loras: Path,
    tmp_path: Path,
) -> WorkerFactory:
    def make(**settings: object) -> Worker:
        defaults = {"data_dir": tmp_path, "model": [str(tiny_model)], "lora_dir": loras}
        return Worker(store, images, cache, **(defaults | settings))

    return make


def _request(**fields: object) -> GenerationRequest:
    return make_request(model="default", **fields)


def test_a_job_gets_a_real_safety_verdict_and_readable_metadata(worker_for: WorkerFactory) -> None:
    worker = worker_for()

    job = worker.run(_request(num_outputs=2))

    assert job.status == JobStatus.COMPLETED, job.error
    # The tiny model ships no checker: NudeNet judged its noise, and passed it.
    assert [o.nsfw for o in job.outputs] == [False, False]
    [sampler] = read_parameters(worker.images, job.outputs[0].key).samplers
    assert sampler.model is not None and sampler.model.name == "default"


def test_the_compel_setting_weights_every_jobs_prompts(worker_for: WorkerFactory) -> None:
    plain = worker_for()
    everywhere = worker_for(compel_everywhere=True)
    prompt = "a (red)1.5 circle"

    weighted = plain.pixels(_request(prompt=prompt, use_compel=True))

    assert np.array_equal(everywhere.pixels(_request(prompt=prompt)), weighted)
    assert not np.array_equal(plain.pixels(_request(prompt=prompt)), weighted)


def test_a_lora_job_leaves_the_next_job_untouched(worker_for: WorkerFactory) -> None:
    worker = worker_for()
    before = worker.pixels(_request())

    with_lora = worker.pixels(_request(lora="ink"))

    assert not np.array_equal(with_lora, before)
    assert np.array_equal(worker.pixels(_request()), before)


def test_an_unknown_lora_fails_the_job_naming_the_installed_ones(worker_for: WorkerFactory) -> None:
    job = worker_for().run(_request(lora="nope"))

    assert job.status == JobStatus.FAILED
    assert job.error == "unknown LoRA 'nope'; installed: ink"


def test_without_a_lora_dir_the_data_dirs_loras_folder_is_used(
    worker_for: WorkerFactory,
) -> None:
    job = worker_for(lora_dir=None).run(_request(lora="ink"))

    # By default the server looks in <data-dir>/loras, empty here.
    assert job.status == JobStatus.FAILED
    assert job.error == "unknown LoRA 'ink'; installed: none"


def test_a_worker_loads_its_default_and_every_model_marked_compile_before_its_first_job(
    tmp_path: Path, tiny_model: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        "".join(
            f'[models.{name}]\nsource = "{tiny_model}"\n{extra}\n'
            for name, extra in [
                ("plain", ""),
                ("fast", "compile = true"),
                ("quick", "compile = true"),
            ]
        )
    )
    registry = load_registry(models, [])

    def prepared(served: list[str]) -> list[str]:
        return [spec.name for spec in models_to_prepare(registry, served)]

    # The built-in default first, then the compiled ones, so their first users do not wait.
    assert prepared(["default", "plain", "fast", "quick"]) == ["default", "fast", "quick"]
    # A worker of some queues: the first of them, then its compiled ones, each once.
    assert prepared(["plain", "quick"]) == ["plain", "quick"]
    assert prepared(["fast", "plain"]) == ["fast"]
