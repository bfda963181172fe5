"""Benchmarks: throughput, quality at budget, data preparation; run as ``python -m bench.X``."""
