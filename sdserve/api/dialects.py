"""Every dialect the server speaks, most specific paths first (RunPod's catch-all is last)."""

from __future__ import annotations

from sdserve.api import deepinfra, modelslab, openai, runpod
from sdserve.api.dialect import Dialect

DIALECTS: list[Dialect] = [openai.DIALECT, deepinfra.DIALECT, modelslab.DIALECT, runpod.DIALECT]
