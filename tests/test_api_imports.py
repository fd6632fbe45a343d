"""The API process never loads torch, diffusers or transformers: only spawned workers do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# What `sdserve serve` does before it spawns workers and binds: the CLI, then the whole app
# (job store, registry with the demo model inspected, image store, every dialect's routes).
# The supervisor imports the workers' entry point; that module loads the engine only inside
# the spawned process.
_BUILD_THE_APP = """
import json, sys
from pathlib import Path

import sdserve.cli
from sdserve.server import create_app
from sdserve.settings import Settings

create_app(Settings(data_dir=Path(sys.argv[1])))
heavy = ("torch", "diffusers", "transformers", "sdserve.engine")
print(json.dumps([name for name in heavy if name in sys.modules]))
"""


def test_building_the_app_loads_no_torch_diffusers_or_engine(tmp_path: Path) -> None:
    # A fresh interpreter: this test process has long imported torch for the other tests.
    env = {key: value for key, value in os.environ.items() if not key.startswith("SDSERVE_")}
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_THE_APP, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )

    assert json.loads(done.stdout.splitlines()[-1]) == []
