"""The job core: canonical requests, jobs, and the service every dialect talks to."""
