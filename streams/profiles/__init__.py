"""Calibrated simulator profiles (JSON), read with ``importlib.resources``."""
