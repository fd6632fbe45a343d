"""Defaults chosen by measurement (bench/batching.py): batch size and workers per kind of device."""

from __future__ import annotations

import os

import pytest

from sdserve.settings import DEFAULT_MAX_BATCH, Settings


def test_batches_of_four_on_a_cpu_and_eight_on_a_gpu_unless_told_otherwise() -> None:
    assert Settings().max_batch_for("cpu") == DEFAULT_MAX_BATCH["cpu"] == 4
    assert Settings().max_batch_for("cuda:1") == DEFAULT_MAX_BATCH["gpu"] == 8
    assert Settings(max_batch=1).max_batch_for("cpu") == 1  # each job alone
    assert Settings(max_batch=16).max_batch_for("cuda") == 16
    assert Settings().batch_wait_ms == 0  # a lone request never waits for company


def test_two_workers_share_a_cpu_and_one_runs_a_gpu_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SDSERVE_WORKERS", raising=False)
    assert Settings(device="cpu").workers == min(2, os.cpu_count() or 1)
    assert Settings(device="cuda:0").workers == 1
    assert Settings(device="cpu", workers=3).workers == 3
    assert Settings(device="cpu", workers=0).workers == 0  # an API-only node
    monkeypatch.setenv("SDSERVE_WORKERS", "4")
    assert Settings(device="cpu").workers == 4
