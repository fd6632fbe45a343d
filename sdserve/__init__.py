"""sdserve: a self-hosted Stable Diffusion inference server."""

__version__ = "0.1.0"
