"""The progress bar of `sdserve generate`: denoising steps, steps per second, time left."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _StepRate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} steps/s", style="progress.data.speed")


class StepProgress:
    """A rich progress bar on stderr (stdout keeps the written files' names), fed with what
    the job is doing and the steps done out of all of them. It shows from its first news, so
    that an error found before (a bad option) is not drawn under a bar."""

    def __init__(self, console: Console | None = None) -> None:
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            _StepRate(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self._task = self._bar.add_task("starting", total=None)
        self._shown = False

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._shown:
            self._bar.stop()

    def waiting(self, what: str) -> None:
        """Before the first step: what the job waits for (`queued`, `loading the model`)."""
        self._show()
        self._bar.update(self._task, description=what)

    def step(self, done: int, total: int) -> None:
        """`done` denoising steps out of `total` (over all the images)."""
        self._show()
        self._bar.update(self._task, description="denoising", completed=done, total=total)

    def warn(self, message: str) -> None:
        """Something the request will not do though it was accepted, printed above the bar."""
        self._bar.console.print(
            f"warning: {message}", style="yellow", markup=False, highlight=False
        )

    def finished(self) -> None:
        task = self._bar.tasks[0]
        self._bar.update(self._task, description="done", completed=task.total or 0)

    def _show(self) -> None:
        if not self._shown:
            self._bar.start()
            self._shown = True
