"""Workspace setup: bootstrap of global concurrency limits, deployment and trigger helpers."""
