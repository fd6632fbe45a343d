"""Shares a CPU's cores between the node's busy workers.

A worker alone uses every core (a lone request runs as fast as a raw call); while several hold
jobs, each uses its share (cores / busy workers): torch threads oversubscribed across processes
slow generation many-fold, and one-thread workers side by side make the most images per second
of small models (bench/README.md, batching.py). Each worker keeps its state in an array shared
by the node's workers (its supervisor clears a dead worker's slot).

A call of one job takes the share of the moment; a batch of several jobs (the node is under
load: its other workers are about to take the rest) starts on cores / workers. A call gives
threads back at a step as soon as more workers are busy, and takes more only once the others
have stayed idle for `GROW_AFTER_S`. Setting torch's threads is cheap; what costs is a step run
with more threads than the worker's share while another worker generates (OpenMP's teams then
oversubscribe the cores): starting every batch on all cores under load, then giving them back
a step later, made generation 3-12% slower than fixed one-thread workers (bench/README.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, MutableSequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdserve.canonical import GenerationRequest
    from sdserve.engine.generate import GeneratedImage, OnPreview
    from sdserve.worker.runner import Generate

log = logging.getLogger(__name__)

BusyFlags = tuple[MutableSequence[int], int]
"""The node's worker states (a shared array, one per worker) and one worker's slot in them."""

IDLE, HOLDING, GENERATING = 0, 1, 2
"""A worker's states: no job; jobs claimed (gathering a batch, storing); a pipeline call."""

GROW_AFTER_S = 0.3
"""How long the other workers must stay idle before a call takes their cores."""


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
        self._others_idle_since: float | None = None
        self._fixed = fixed_threads is not None
        if fixed_threads is not None:
            self._set_threads(fixed_threads)

    def share(self) -> int:
        """The cores / the workers holding jobs now, at least 1."""
        return max(1, self._cores // max(1, sum(1 for state in self._states if state)))

    def _others_busy(self) -> bool:
        return any(s != IDLE for i, s in enumerate(self._states) if i != self._slot)

    def others_generating(self) -> bool:
        """Whether another worker of the node is in a pipeline call now."""
        return any(s == GENERATING for i, s in enumerate(self._states) if i != self._slot)

    def _set_threads(self, threads: int, jobs: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self._threads = threads
        busy = sum(1 for state in self._states if state)
        log.info(
            "%s: %d torch thread(s), %d of %d workers busy%s",
            self._name,
            threads,
            busy,
            len(self._states),
            f", a batch of {jobs} jobs" if jobs > 1 else "",
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
    def generating(self, jobs: int = 1) -> Iterator[None]:
        """A pipeline call for `jobs` jobs: take the share of the cores it starts with."""
        state = self._states[self._slot]
        self._states[self._slot] = GENERATING
        self._others_idle_since = None
        try:
            share = self.share()
            if jobs > 1:  # under load: the other workers are about to be busy too
                share = max(1, min(share, self._cores // len(self._states)))
            if not self._fixed and share != self._threads:
                self._set_threads(share, jobs)
            yield
        finally:
            self._states[self._slot] = state

    def _step(self) -> None:
        """Between two steps: give threads back as soon as more workers are busy; take more
        once the others have stayed idle for GROW_AFTER_S."""
        if self._fixed:
            return
        share = self.share()
        if share < self._threads:
            self._set_threads(share)
        elif self._others_busy():
            self._others_idle_since = None
        elif share > self._threads:
            now = time.monotonic()
            if self._others_idle_since is None:
                self._others_idle_since = now
            elif now - self._others_idle_since >= GROW_AFTER_S:
                self._set_threads(share)

    def sharing(self, generate: Generate) -> Generate:
        """`generate` as a pipeline call of this worker's, giving threads back at its steps."""

        def run(
            requests: list[GenerationRequest],
            on_step: Callable[[int, int], None],
            on_preview: OnPreview | None = None,
        ) -> list[list[GeneratedImage]]:
            def step(done: int, total: int) -> None:
                self._step()
                on_step(done, total)

            with self.generating(len(requests)):
                return generate(requests, step, on_preview)

        return run
