"""Fixtures for the ssh tests (filled in by that area)."""
