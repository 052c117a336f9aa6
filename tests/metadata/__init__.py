"""Tests of the metadata collectors: a package, so that its conftest.py does not shadow tests/conftest.py."""
