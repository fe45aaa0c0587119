"""Data plane and node network state. Imports nothing from ``agent``."""
