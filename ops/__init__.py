"""Benchmarks and operational scripts, each run as a module from the repository root
(``python -m ops.load_test``); they import the tests' harness (``tests.utils``) for the dev stack."""
