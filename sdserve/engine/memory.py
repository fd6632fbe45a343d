"""How much memory a model's weights take, and how much a device has for them."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from sdserve.detect import safetensors_shapes
from sdserve.registry import ModelSpec


class ModelTooLarge(ValueError):
    """A model whose weights cannot fit the memory budget; the message says what to change."""


def weights_bytes(module: torch.nn.Module) -> int:
    """Bytes of a loaded module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def device_memory(device: str) -> int:
    """Bytes of memory `device` has: the GPU's, or this machine's RAM for the CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimated_bytes(spec: ModelSpec, dtype: torch.dtype, device: str) -> int:
    """Bytes `spec`'s weights will hold on `device` once loaded at `dtype`, read from the
    weight files' headers before loading; 0 when they are not on disk here (a hub id)."""
    element = torch.empty((), dtype=dtype).element_size()
    components = [
        sum(math.prod(shape) for shape in safetensors_shapes(file).values()) * element
        for file in _component_files(spec)
    ]
    return resident_bytes(components, spec, device)


def resident_bytes(components: list[int], spec: ModelSpec, device: str) -> int:
    """Of components of these sizes, the bytes the device holds between requests: all of them,
    or with model offload the largest (one is on the device at a time), or none with sequential
    offload. Offload is for CUDA only; elsewhere everything stays."""
    if spec.offload == "none" or not device.startswith("cuda"):
        return sum(components)
    return max(components, default=0) if spec.offload == "model" else 0


def _component_files(spec: ModelSpec) -> list[Path]:
    source = Path(spec.source).expanduser()
    if spec.kind == "single_file":
        return [source] if source.suffix == ".safetensors" and source.exists() else []
    if spec.kind != "folder" or not source.is_dir():
        return []
    files = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        weights = sorted(folder.glob("*.safetensors"))
        # A folder may hold the same weights twice, e.g. `*.fp16.safetensors` beside the full
        # ones; diffusers loads the plain files unless a variant is asked for.
        plain = [w for w in weights if len(w.name.split(".")) == 2]
        files += plain or weights[:1]
    return files
