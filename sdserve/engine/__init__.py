"""The diffusers layer: loading models, schedulers, generating images (workers only)."""
