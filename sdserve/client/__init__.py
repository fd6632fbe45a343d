"""`sdserve generate`: images from the terminal, through a server's RunPod API or in-process.

Both ways take the same request, checked by the server's own input model (`RunPodInput`) and
job-core rules, so an option breaks the same rules with the same words wherever it runs.
"""
