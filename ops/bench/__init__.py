"""Benchmarks that print figures (``python -m ops.bench.<name>``); results in ``ops/bench/README.md``."""
