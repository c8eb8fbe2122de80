"""Helpers for tools/make_test_models.py (tooling only, never imported by the plugin)."""
