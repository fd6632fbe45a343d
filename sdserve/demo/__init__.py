"""The built-in demo model: a small Stable Diffusion trained here on drawn shapes.

`python -m sdserve.demo.train` recreates it; `python -m sdserve.demo.evaluate` scores it.
"""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "model"
"""The trained model, in diffusers format, shipped inside the package."""
NATIVE_SIZE = 64
"""The size it draws at; larger requests get its image upscaled."""
DEMO_GUIDANCE = 3.0
"""Its default guidance scale: it follows prompts best at 2-3 and falls apart above about 4."""
DEMO_SIZE = 512
"""Its default width and height: what clients of the hosted APIs expect (it draws at 64)."""
DEMO_STEPS = 25
"""Its default denoising steps: more change nothing visible in its 64x64 drawings."""
DEMO_GUIDANCE_CUTOFF = 0.4
"""Guidance stops after 40% of the steps: the hosted APIs' usual 7.5 then follows prompts as 3
does (guidance late in sampling is what breaks its colours; see the README's evaluation)."""
