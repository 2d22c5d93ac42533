"""Fixtures for the jupyter tests (filled in by that area)."""
