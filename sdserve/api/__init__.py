"""HTTP dialects: thin routers that translate wire formats onto the job core."""
