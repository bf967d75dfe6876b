"""Benchmarks: one command each, results in docs/benchmarks.md."""
