"""Fixtures: a tiny real SD pipeline on disk, and real sdserve servers using it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from sdserve.families import FamilyName
from tests.helpers import ServerProcess, running_server
from tests.pg import fresh_database
from tests.s3server import moto_s3_server, s3_env

# The tests never download: a hub id is looked up in the local cache only (the servers they
# start inherit this), so a lookup that cannot succeed fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist two test processes, and the servers and workers they start, share the
# machine's cores: one PyTorch thread each, or their OpenMP thread teams spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

API_KEY = "test-key-1"
OTHER_KEY = "test-key-2"


SHARED_SERVER = {"SDSERVE_SWEEP_INTERVAL_S": "0.5", "SDSERVE_RATE_LIMIT": "none"}
"""The servers many test modules share: no request rate limit, as tests (fuzzing) send calls
faster than the default's 100 per second; tests/api/test_fairness.py tests the limits."""


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised SD-architecture pipeline saved in diffusers format."""
    from tests.models.random_model import build_random_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_random_pipeline(path, seed=0)
    return path


@pytest.fixture(scope="session")
def broken_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's configs without its weights: it passes the start-up inspection and its
    jobs fail when the worker loads it (a disk that lost files, a copy cut short)."""
    path = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_model, path, ignore=shutil.ignore_patterns("*.safetensors"))
    return path


class FamilyModels:
    """Tiny random pipelines of each family, built on first use and kept for the session."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def __call__(self, family: FamilyName) -> Path:
        from tests.models.random_model import build_random_family

        path = self._folder / family
        if not path.exists():
            build_random_family(path, family, seed=0)
        return path


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> FamilyModels:
    return FamilyModels(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    """One server with two API keys, shared by a test module."""
    data_dir = tmp_path_factory.mktemp("data")
    env = {**SHARED_SERVER, "SDSERVE_API_KEYS": f"{API_KEY},{OTHER_KEY}"}
    with running_server(data_dir, ["--model", str(tiny_model)], env) as srv:
        yield srv


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback for the whole session."""
    with moto_s3_server() as url:
        yield url


def shared_env(
    database: str, s3_endpoint: str, bucket: str, prefix: str = "images"
) -> dict[str, str]:
    """Settings of a shared-mode node: PostgreSQL jobs, S3 images under `bucket/prefix`."""
    return {
        **s3_env(),
        "SDSERVE_DATABASE": database,
        "SDSERVE_STORAGE": f"s3://{bucket}/{prefix}?endpoint_url={s3_endpoint}",
    }


BACKENDS = ["sqlite", "postgresql+s3"]
"""The two deployments every contract test runs on: embedded, and shared (PostgreSQL, S3)."""


@contextmanager
def backend_running_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    args: list[str],
    env: dict[str, str],
) -> Iterator[ServerProcess]:
    """A server on the backend `request.param` names (one of BACKENDS)."""
    data_dir = tmp_path_factory.mktemp("data")
    if request.param == "sqlite":
        with running_server(data_dir, args, env) as srv:
            yield srv
        return
    s3_endpoint = request.getfixturevalue("s3_endpoint")
    with fresh_database() as database:
        shared = {**env, **shared_env(database, s3_endpoint, "sdserve-test")}
        with running_server(data_dir, args, shared) as srv:
            yield srv


@pytest.fixture(scope="module", params=BACKENDS)
def backend_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """Like `server`, once embedded (SQLite, local images) and once shared (PostgreSQL, S3)."""
    env = {**SHARED_SERVER, "SDSERVE_API_KEYS": f"{API_KEY},{OTHER_KEY}"}
    with backend_running_server(
        request, tmp_path_factory, ["--model", str(tiny_model)], env
    ) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as c:
        yield c
