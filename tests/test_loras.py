"""The LoRA folder: each `.safetensors` file is a LoRA named by its stem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.loras import UnknownLora, find_lora, list_loras


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("b.safetensors", "a.safetensors", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_loras_are_the_safetensors_files_by_stem_sorted(folder: Path) -> None:
    assert list_loras(folder) == ["a", "b"]
    assert list_loras(folder / "missing") == []


def test_find_lora_gives_the_file_or_names_the_installed_ones(folder: Path) -> None:
    assert find_lora(folder, "a") == folder / "a.safetensors"
    with pytest.raises(UnknownLora, match="unknown LoRA 'c'; installed: a, b"):
        find_lora(folder, "c")
    with pytest.raises(UnknownLora, match=r"unknown LoRA '\.\./a'"):
        find_lora(folder / "sub", "../a")
    with pytest.raises(UnknownLora, match="installed: none"):
        find_lora(folder / "missing", "a")
