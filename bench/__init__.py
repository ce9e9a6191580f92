"""Benchmark suite of solana-snapshot-tracker: ``python bench/run.py`` (see bench/README.md)."""
