"""The command line's own behaviour: its version, and settings errors a person can read."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path


def _sdserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    command = [sys.executable, "-m", "sdserve", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_version_prints_the_installed_packages_version(tmp_path: Path) -> None:
    result = _sdserve("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"sdserve {importlib.metadata.version('sdserve')}\n"


def test_db_upgrade_takes_postgresql_only_and_says_so(tmp_path: Path) -> None:
    help_text = " ".join(_sdserve("db", "upgrade", "--help", cwd=tmp_path).stdout.split())
    assert "only a postgresql:// URL is taken. Without it, jobs live in SQLite" in help_text

    refused = _sdserve("db", "upgrade", "--database", "sqlite:///jobs.db", cwd=tmp_path)
    assert refused.returncode == 2
    error = refused.stderr.splitlines()[-1]
    assert error == (
        "Error: Invalid value: database must be a postgresql:// URL (leave it unset for SQLite)"
    )
    assert "Traceback" not in refused.stderr and "default_factory" not in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bad_setting_is_named_with_its_value(tmp_path: Path) -> None:
    refused = _sdserve("serve", "--workers", "-1", "--port", "0", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        "Error: Invalid value: workers: Input should be greater than or equal to 0 (got -1)"
    )
    # A folder where an S3 URL goes: refused with the other settings, not by a traceback.
    folder = _sdserve("serve", "--storage", str(tmp_path / "images"), "--port", "0", cwd=tmp_path)
    assert folder.returncode == 2 and "Traceback" not in folder.stderr, folder.stderr
    assert folder.stderr.splitlines()[-1].startswith(
        "Error: Invalid value: storage URL must start with s3://"
    ), folder.stderr
