"""Prefect flows of analytics-flows, one subpackage per job."""
