"""Benchmarks, run by hand; results are recorded in the README."""
