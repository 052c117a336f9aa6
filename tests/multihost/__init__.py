"""Tests of a multi-host deployment: a package, so that its conftest.py does not shadow tests/conftest.py."""
