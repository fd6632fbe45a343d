"""Shares a CPU's cores between the node's busy workers.

A worker alone uses every core (a lone request runs as fast as a raw call); while several hold
jobs, each uses its share (cores / busy workers): torch threads oversubscribed across processes
slow generation many-fold, and one-thread workers side by side make the most images per second
of small models (bench/README.md, batching.py). Each worker keeps its state in an array shared
by the node's workers (its supervisor clears a dead worker's slot). A worker takes its share
when a call starts and gives threads back at a step when more workers have become busy, but
never takes more within a call: changing torch's threads costs, and thrashing between one and
two threads made every step about 20% slower under load.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, MutableSequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdserve.canonical import GenerationRequest
    from sdserve.engine.generate import GeneratedImage
    from sdserve.worker.runner import Generate

log = logging.getLogger(__name__)

BusyFlags = tuple[MutableSequence[int], int]
"""The node's worker states (a shared array, one per worker) and one worker's slot in them."""

IDLE, HOLDING, GENERATING = 0, 1, 2
"""A worker's states: no job; jobs claimed (gathering a batch, storing); a pipeline call."""


class CoreShare:
    """One worker's part in the node's worker states `busy` (its own at `slot`)."""

    def __init__(
        self,
        busy: MutableSequence[int],
        slot: int,
        fixed_threads: int | None = None,
        name: str = "worker",
    ) -> None:
        self._name = name
        self._states = busy
        self._slot = slot
        self._cores = os.cpu_count() or 1
        self._threads = 0
        self._fixed = fixed_threads is not None
        if fixed_threads is not None:
            self._set_threads(fixed_threads)

    def share(self) -> int:
        """The cores / the workers holding jobs now, at least 1."""
        return max(1, self._cores // max(1, sum(1 for state in self._states if state)))

    def others_generating(self) -> bool:
        """Whether another worker of the node is in a pipeline call now."""
        return any(s == GENERATING for i, s in enumerate(self._states) if i != self._slot)

    def _set_threads(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._threads = threads
        busy = sum(1 for state in self._states if state)
        log.info(
            "%s: %d torch thread(s), %d of %d workers busy",
            self._name,
            threads,
            busy,
            len(self._states),
        )

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Count this worker busy while it holds claimed jobs."""
        self._states[self._slot] = HOLDING
        try:
            yield
        finally:
            self._states[self._slot] = IDLE

    @contextmanager
    def generating(self) -> Iterator[None]:
        """A pipeline call: take the current share of the cores for it."""
        state = self._states[self._slot]
        self._states[self._slot] = GENERATING
        try:
            share = self.share()
            if not self._fixed and share != self._threads:
                self._set_threads(share)
            yield
        finally:
            self._states[self._slot] = state

    def _step(self) -> None:
        """Between two steps: give threads back if more workers have become busy."""
        if not self._fixed and self.share() < self._threads:
            self._set_threads(self.share())

    def sharing(self, generate: Generate) -> Generate:
        """`generate` as a pipeline call of this worker's, giving threads back at its steps."""

        def run(
            requests: list[GenerationRequest], on_step: Callable[[int, int], None]
        ) -> list[list[GeneratedImage]]:
            def step(done: int, total: int) -> None:
                self._step()
                on_step(done, total)

            with self.generating():
                return generate(requests, step)

        return run
