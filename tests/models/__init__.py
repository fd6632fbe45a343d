"""Tiny random-weight models of every family, built on the fly for the tests and benchmarks."""
