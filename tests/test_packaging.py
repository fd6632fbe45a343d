"""What pyproject.toml promises a user installing sdserve: the Pythons it installs on, the
`clients` extra behind the README's examples, and the files a wheel must carry."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import tomllib
from fnmatch import fnmatch
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from sdserve.api.docs import ASSETS_DIR

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
TORCH_PYTHONS = ["3.11", "3.12", "3.13", "3.14"]
"""The Pythons from 3.11 up that torch 2.13.0 publishes wheels for (it starts at 3.10, which
sdserve's code predates)."""


def _example_imports() -> set[str]:
    """The top-level modules the README's Python examples import, besides the standard
    library and sdserve itself."""
    modules: set[str] = set()
    for _, block in re.findall(r"^( *)```python\n(.*?)^\1```", README, re.S | re.M):
        for node in ast.walk(ast.parse(textwrap.dedent(block))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "sdserve"}


def test_clients_extra_installs_what_the_readme_examples_import() -> None:
    extra = {
        canonicalize_name(Requirement(line).name)
        for line in PROJECT["project"]["optional-dependencies"]["clients"]
    }
    imports = _example_imports()
    assert {"runpod", "openai"} <= imports
    distributions = packages_distributions()
    for module in imports:
        names = {canonicalize_name(name) for name in distributions.get(module, [module])}
        assert names & extra, f"the README imports {module}; sdserve[clients] lacks it"
    assert "pip install -e '.[clients]'" in README


def test_installs_on_every_python_torch_supports() -> None:
    project = PROJECT["project"]
    allowed = SpecifierSet(project["requires-python"])
    assert all(allowed.contains(version) for version in TORCH_PYTHONS)
    assert not allowed.contains("3.10")
    # TORCH_PYTHONS is this release's list: a new pin asks for the list to be checked again.
    assert "torch==2.13.0" in project["dependencies"]
    listed = [c.removeprefix("Programming Language :: Python :: ") for c in project["classifiers"]]
    assert [v for v in listed if re.fullmatch(r"3\.\d+", v)] == TORCH_PYTHONS
    stated = re.search(r"Python (3\.\d+) to (3\.\d+)", README)
    assert stated is not None and list(stated.groups()) == [TORCH_PYTHONS[0], TORCH_PYTHONS[-1]]


def test_wheel_carries_the_documentation_pages_assets() -> None:
    globs = PROJECT["tool"]["setuptools"]["package-data"]["sdserve.api"]
    assets = [path.relative_to(ASSETS_DIR.parent).as_posix() for path in ASSETS_DIR.iterdir()]
    assert len(assets) >= 4
    for asset in assets:
        assert any(fnmatch(asset, glob) for glob in globs), f"no package-data glob takes {asset}"
