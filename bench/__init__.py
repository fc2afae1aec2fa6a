"""Benchmarks, outside the default test paths: ``python -m bench.split``, pytest-benchmark files."""
