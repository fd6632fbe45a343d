"""The playground's files are package data: every file the page needs is in the wheel."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

from sdserve.api.playground import WEB_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_every_playground_file_is_declared_package_data() -> None:
    # What setuptools puts in the wheel: the files the `sdserve` package's patterns match.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["sdserve"]
    package = ROOT / "sdserve"
    carried = {Path(match) for p in patterns for match in glob.glob(p, root_dir=package)}
    shipped = {p.relative_to(package) for p in WEB_DIR.rglob("*") if p.is_file()}
    assert {"web/index.html", "web/app.css", "web/js/app.js"} <= {p.as_posix() for p in shipped}
    assert shipped <= carried, f"not in the wheel: {sorted(map(str, shipped - carried))}"
