"""Prefect flows of analytics-flows, one module per job."""
