"""Defaults chosen by measurement (bench/batching.py): workers and batch size per device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdserve import settings as settings_module
from sdserve.settings import DEFAULT_CPU_WORKERS, DEFAULT_MAX_BATCH, Settings


def test_a_cpu_gets_two_workers_and_batches_of_four_unless_told_otherwise() -> None:
    cpu = Settings(device="cpu")
    expected = DEFAULT_CPU_WORKERS if (os.cpu_count() or 1) >= 2 else 1
    assert cpu.worker_count() == expected == 2  # this project's machines have 2 cores
    assert cpu.max_batch_for("cpu") == DEFAULT_MAX_BATCH["cpu"] == 4
    told = Settings(device="cpu", workers=1, max_batch=1)
    assert told.worker_count() == 1 and told.max_batch_for("cpu") == 1
    assert Settings(device="cpu", workers=0).worker_count() == 0  # an API-only node


def test_a_gpu_gets_one_worker_and_batches_of_eight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings(device="cuda").worker_count() == 1
    assert Settings(device="cuda:1").max_batch_for("cuda:1") == DEFAULT_MAX_BATCH["gpu"] == 8
    # `auto` is told apart without torch, by the GPUs the NVIDIA driver lists.
    monkeypatch.setattr(settings_module, "NVIDIA_GPUS", str(tmp_path))
    assert Settings(device="auto").runs_on_cpu()
    (tmp_path / "0000:01:00.0").mkdir()
    assert not Settings(device="auto").runs_on_cpu()
    assert Settings(device="auto").worker_count() == 1
