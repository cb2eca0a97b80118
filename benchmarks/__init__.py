"""Benchmarks run from the repository root (``python -m benchmarks.throughput``); see README.md."""
