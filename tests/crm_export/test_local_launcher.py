"""The local launcher's job registry: dead processes, final states, cancellation, no self-deadlock."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pipelines.crm_export.api_key import ApiKey
from tasks.crm_export.jobs import JobAlreadyExistsError, JobSpec, JobState
from tasks.crm_export.launchers.local import LocalLauncher

NAME = "crm-export-20261116"


def spec(*args: str) -> JobSpec:
    return JobSpec(
        name=NAME, pipeline_args=args or ("--input_file=/nonexistent",), labels={}, api_key=ApiKey("k")
    )


def wait_for(launcher: LocalLauncher, job_id: str, states: set[JobState], timeout: float = 60) -> JobState:
    deadline = time.monotonic() + timeout
    while (state := launcher.get_job(job_id).state) not in states:
        assert time.monotonic() < deadline, f"job still {state}"
        time.sleep(0.1)
    return state


def test_an_active_name_is_refused_and_a_dead_job_does_not_block_the_next_submit(tmp_path, job_tmpdir):
    launcher = LocalLauncher(tmp_path)
    first = launcher.submit(spec())
    with pytest.raises(JobAlreadyExistsError, match=first):
        launcher.submit(spec())
    os.killpg(launcher.read(first)["pid"], signal.SIGKILL)
    time.sleep(0.5)
    # submit finds the dead job under its own registry lock, corrects it and goes on (no self-deadlock)
    second = launcher.submit(spec())
    assert launcher.get_job(first).state is JobState.FAILED
    assert "exited without a final state" in launcher.job_errors(first)[-1]
    assert {j.id for j in launcher.list_jobs(NAME)} == {first, second}
    wait_for(launcher, second, {JobState.FAILED})  # the job itself fails: no --crm_url
    assert any("--crm_url is required" in e for e in launcher.job_errors(second))


def test_a_final_state_is_never_overwritten(tmp_path):
    launcher = LocalLauncher(tmp_path)
    job_id = launcher.submit(spec())
    wait_for(launcher, job_id, {JobState.FAILED})
    launcher.update(job_id, state=JobState.DONE.value, counters={"records_read": 1})
    record = launcher.read(job_id)
    assert record["state"] == JobState.FAILED.value
    assert record["counters"] == {"records_read": 1}


def test_cancel_ends_the_job_cancelled_and_leaves_no_temporary_directory(tmp_path, job_tmpdir):
    launcher = LocalLauncher(tmp_path)
    job_id = launcher.submit(spec())
    launcher.cancel(job_id)
    assert wait_for(launcher, job_id, {JobState.CANCELLED, JobState.FAILED}) is JobState.CANCELLED
    assert list(job_tmpdir.iterdir()) == []  # Beam's beam-pipeline-temp* is removed too
    launcher.update(job_id, state=JobState.RUNNING.value)  # a late report from the job changes nothing
    launcher.cancel(job_id)  # nor does a second cancel
    assert launcher.get_job(job_id).state is JobState.CANCELLED
