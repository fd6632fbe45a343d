"""Where a node's processes record their metrics: a directory per node, gone with the node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sdserve.metrics import remove_stale_directories


def test_only_directories_of_dead_nodes_are_removed(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import os; print(os.getpid())"]
    gone = subprocess.run(command, capture_output=True, text=True, check=True)
    dead = tmp_path / f"sdserve-metrics-{gone.stdout.strip()}-abc"
    live = tmp_path / f"sdserve-metrics-{os.getpid()}-def"
    other = tmp_path / "sdserve-metrics-notes"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"\0")

    remove_stale_directories(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
