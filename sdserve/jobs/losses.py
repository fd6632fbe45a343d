"""Why a run ended without its worker finishing it, and whether that counts against the job.

Only the death of the worker while it ran the job counts as one of the job's attempts: that
death may be the job's doing (it asked for more memory than the worker has). A restart of the
server, or a worker stopped on purpose, is nobody's fault but the operator's: the job goes back
to its queue as it was.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class RunLoss:
    cause: str
    """What the worker did, as the job's FAILED message tells it: "was killed by SIGKILL"."""
    counted: bool
    """A death of the worker while it ran the job: uses up one of the job's attempts."""


def worker_died(exitcode: int | None) -> RunLoss:
    """The worker process ended on its own or was killed, seen by its supervisor."""
    if exitcode is not None and exitcode < 0:
        cause = f"was killed by {_signal_name(-exitcode)}"
        if -exitcode == signal.SIGKILL:
            cause += ", as the system's out-of-memory killer does"
    else:
        cause = f"exited with code {exitcode}"
    return RunLoss(cause, counted=True)


def worker_silent(silent_s: float) -> RunLoss:
    """No heartbeat for `silent_s`: the worker (or its machine) died, or hangs."""
    return RunLoss(f"sent no heartbeat for {silent_s:.0f} s", counted=True)


SERVER_RESTARTED = RunLoss("the server restarted while the job ran", counted=False)
"""A new embedded server found the run of its predecessor (killed, or stopped) unfinished."""
SERVER_STOPPED = RunLoss("the server stopped while the job ran", counted=False)
WORKER_STOPPED = RunLoss("the worker was stopped while the job ran", counted=False)
"""`sdserve worker` told to stop at once (a second SIGTERM or Ctrl-C)."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def giving_up_message(deaths: int, last: RunLoss) -> str:
    """The FAILED message of a job whose worker died `deaths` times while running it."""
    times = "once" if deaths == 1 else f"{deaths} times"
    return (
        f"the worker running this job died {times} (the last time it {last.cause});"
        " giving up: the request may need more memory or time than the worker has"
    )
