"""Prefect tasks and the plain functions behind them, one subpackage per job; `common` for all jobs."""
