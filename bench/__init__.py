"""Benchmarks: reproducible scripts that print figures (not tests)."""
