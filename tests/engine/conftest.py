"""Fixtures: the tiny random pipeline (tests/conftest.py builds it), loaded once; a LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.engine.pipelines import PipelineSet, load_pipelines
from sdserve.registry import ModelSpec

from .helpers import save_random_lora


@pytest.fixture(scope="session")
def tiny_spec(tiny_model: Path) -> ModelSpec:
    return ModelSpec(name="tiny", source=str(tiny_model))


@pytest.fixture(scope="session")
def pipes(tiny_spec: ModelSpec) -> PipelineSet:
    return load_pipelines(tiny_spec, "cpu")


@pytest.fixture(scope="session")
def loras_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA folder holding one random LoRA for the tiny model, named `ink`."""
    folder = tmp_path_factory.mktemp("loras")
    save_random_lora(tiny_model, folder, "ink")
    return folder
