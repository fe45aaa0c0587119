"""Composition root: configuration, daemon wiring, HTTP API, status, CLI and the lab."""

__version__ = "0.1.0"
