"""Benchmarks of weave-py (run as ``python -m bench.<name>``)."""
