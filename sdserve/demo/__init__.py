"""The built-in demo model's tools: a small Stable Diffusion trained here on drawn shapes.

`python -m sdserve.demo.train` recreates it; `python -m sdserve.demo.evaluate` scores it.
Its weights ship in `model/`; its serving defaults (`DEMO_*`) are the registry's.
"""
