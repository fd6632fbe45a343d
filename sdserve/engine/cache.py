"""Loaded models kept between requests, within a memory budget."""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict

import torch

from sdserve.engine.memory import ModelTooLarge, device_memory, estimated_bytes
from sdserve.engine.pipelines import PipelineSet, load_pipelines, model_dtype, resolve_device
from sdserve.engine.speed import SpeedOptions, apply_speed_options
from sdserve.registry import ModelSpec

log = logging.getLogger(__name__)

GIB = 1024**3


class PipelineCache:
    """Loaded models by name; the least recently used are unloaded when the next one would take
    their weights past `budget_bytes` (default: all the memory the device has). Each model gets
    `speed`'s options and those of its own spec."""

    def __init__(
        self, device: str, budget_bytes: int | None = None, speed: SpeedOptions = SpeedOptions()
    ) -> None:
        self._device = resolve_device(device)
        self._budget = budget_bytes or device_memory(self._device)
        self._speed = speed
        self._loaded: OrderedDict[str, PipelineSet] = OrderedDict()

    def get(self, spec: ModelSpec) -> PipelineSet:
        """The pipelines of `spec`, loading them (and unloading others) if needed."""
        pipes = self._loaded.get(spec.name)
        if pipes is not None:
            self._loaded.move_to_end(spec.name)
            return pipes
        spec = spec.inspected()
        need = estimated_bytes(spec, model_dtype(spec, self._device), self._device)
        if need > self._budget:
            raise ModelTooLarge(
                f"model {spec.name} needs {need / GIB:.1f} GiB for its weights on"
                f" {self._device}, more than the {self._budget / GIB:.1f} GiB budget"
                " (SDSERVE_MODEL_MEMORY_GB); set a smaller `dtype` or `offload` for it in the"
                " models file"
            )
        # Unload before loading, so that the weights never exceed the budget together.
        while self._loaded and self.used_bytes + need > self._budget:
            self._evict_oldest()
        pipes = load_pipelines(spec, self._device)
        apply_speed_options(pipes, self._speed)
        self._loaded[spec.name] = pipes
        # A hub model's size is only known once loaded: keep the others only while they fit.
        while len(self._loaded) > 1 and self.used_bytes > self._budget:
            self._evict_oldest()
        return pipes

    @property
    def used_bytes(self) -> int:
        """Bytes of weights the loaded models hold on the device."""
        return sum(pipes.weights_bytes for pipes in self._loaded.values())

    @property
    def loaded(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        return list(self._loaded)

    def _evict_oldest(self) -> None:
        name, _ = self._loaded.popitem(last=False)
        log.info("unloading model %s to make room", name)
        # The weights are only freed once unreferenced; CUDA keeps freed blocks until emptied.
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
