"""LoRAs loaded once per model and switched on for one request at a time (diffusers' adapters)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import SafetensorError

log = logging.getLogger(__name__)

MAX_ADAPTERS = 8
"""LoRAs kept loaded per model; the least recently used is deleted beyond this."""


class LoraLoadError(ValueError):
    """A LoRA file that diffusers cannot apply to the model; the message names the LoRA."""


@dataclass(frozen=True)
class _Loaded:
    adapter: str
    """The adapter name diffusers knows it by."""
    version: tuple[int, int]
    """The file's modification time and size when it was read: a replaced file is read again."""


class LoraAdapters:
    """The LoRAs loaded into one model's pipelines so far.

    The txt2img, img2img and inpaint pipelines share their modules, so loading into one
    serves all three. Between requests every adapter is disabled: the model then computes
    exactly what it computed before any LoRA was loaded.
    """

    def __init__(self) -> None:
        self._loaded: OrderedDict[Path, _Loaded] = OrderedDict()
        self._count = 0
        self.fused_denoiser: Any = None
        """The denoiser, when its QKV projections are fused (engine/speed.py): adapters act on
        the separate projections, so it runs unfused while a LoRA applies."""

    @contextmanager
    def applied(self, pipe: Any, path: Path | None, scale: float) -> Iterator[None]:
        """Within the block, `pipe` runs with the LoRA at `path` at `scale` (none: as it is)."""
        if path is None:
            yield
            return
        fused = self.fused_denoiser
        if fused is not None:
            fused.unfuse_qkv_projections()
        try:
            adapter = self._adapter(pipe, path)
            try:
                pipe.enable_lora()
                pipe.set_adapters([adapter], adapter_weights=[scale])
                yield
            finally:
                pipe.disable_lora()
        finally:
            if fused is not None:
                fused.fuse_qkv_projections()

    @property
    def loaded(self) -> list[Path]:
        """Files of the LoRAs loaded, least recently used first."""
        return list(self._loaded)

    def _adapter(self, pipe: Any, path: Path) -> str:
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        known = self._loaded.get(path)
        if known is not None and known.version == version:
            self._loaded.move_to_end(path)
            return known.adapter
        if known is not None:
            self._delete(pipe, path)
        while len(self._loaded) >= MAX_ADAPTERS:
            self._delete(pipe, next(iter(self._loaded)))
        self._count += 1
        adapter = f"lora{self._count}"
        try:
            # Read into memory, not mapped: a mapped file rewritten in place would change (or,
            # truncated, crash) the loaded adapter under a running request.
            weights = safetensors.torch.load(path.read_bytes())
            pipe.load_lora_weights(weights, adapter_name=adapter)
        except (
            ValueError, KeyError, RuntimeError, OSError, AttributeError, SafetensorError
        ) as error:  # fmt: skip
            # A half-applied file may have added layers to some modules: start clean.
            pipe.unload_lora_weights()
            self._loaded.clear()
            raise LoraLoadError(
                f"LoRA {path.stem!r} cannot be applied to this model: {error}"
            ) from error
        self._loaded[path] = _Loaded(adapter, version)
        log.info("loaded LoRA %s as adapter %s", path.stem, adapter)
        return adapter

    def _delete(self, pipe: Any, path: Path) -> None:
        pipe.delete_adapters([self._loaded.pop(path).adapter])
