"""Throughput comparisons (python -m benchmarks.NAME); results/README.md has what they measured."""
