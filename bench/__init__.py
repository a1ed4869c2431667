"""Benchmarks of clickwatch: scripts that print figures, not tests."""
