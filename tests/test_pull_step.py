"""The deployments' pull step, run as a worker's run runs it (Prefect's ``run_steps`` on prefect.yaml's
``pull`` section), from a directory that is not the checkout."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import yaml
from prefect.deployments.steps.core import StepExecutionError, run_steps

from deployments.steps import ProjectDirectoryError, set_project_directory

ROOT = Path(__file__).resolve().parents[1]


def pull_steps() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A worker's run starts in a temporary directory of its own; restore the cwd afterwards."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_pull_step_changes_into_the_checkout_named_by_analytics_flows_dir(elsewhere, monkeypatch):
    monkeypatch.setenv("ANALYTICS_FLOWS_DIR", str(ROOT))
    outputs = asyncio.run(run_steps(pull_steps()))
    assert Path.cwd() == ROOT
    assert outputs["directory"] == str(ROOT)


def test_a_worker_without_analytics_flows_dir_fails_its_runs_naming_the_variable(elsewhere, monkeypatch):
    monkeypatch.delenv("ANALYTICS_FLOWS_DIR", raising=False)
    with pytest.raises(StepExecutionError) as raised:
        asyncio.run(run_steps(pull_steps()))
    cause = raised.value.__cause__
    assert isinstance(cause, ProjectDirectoryError)
    assert str(cause) == (
        "ANALYTICS_FLOWS_DIR is not set in this worker's environment: set it to this host's checkout of "
        "analytics-flows (the directory holding prefect.yaml and flows/) and restart the worker, e.g. "
        "`ANALYTICS_FLOWS_DIR=/srv/analytics-flows prefect worker start --pool <pool>`."
    )
    assert Path.cwd() == elsewhere


def test_a_directory_that_is_not_the_checkout_is_refused(elsewhere, monkeypatch):
    monkeypatch.setenv("ANALYTICS_FLOWS_DIR", str(elsewhere))
    with pytest.raises(ProjectDirectoryError) as raised:
        set_project_directory()
    assert str(raised.value).startswith(
        f"ANALYTICS_FLOWS_DIR={str(elsewhere)!r} is not a checkout of analytics-flows on this host "
        f"(no flows/ directory in {elsewhere.resolve()})"
    )
    assert Path.cwd() == elsewhere
    assert os.environ["ANALYTICS_FLOWS_DIR"] == str(elsewhere)
