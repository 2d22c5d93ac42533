"""Fixtures for the pg tests (filled in by that area)."""
