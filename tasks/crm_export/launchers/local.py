"""A ``JobLauncher`` that runs the pipeline on Beam's local Python runner, in a detached process, with a
job registry on disk (docs/crm-export.md, "Local"). The job process is
``python -m tasks.crm_export.launchers.local --registry DIR --job-id ID -- <pipeline args>``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.crm_export.accounting import Counters, Distribution, ExportMetrics, check_accounting
from tasks.crm_export.jobs import TERMINAL_STATES, JobAlreadyExistsError, JobInfo, JobSpec, JobState

#: Never Prism (it downloads a binary at run time): Beam's in-process Python runner.
LOCAL_RUNNER = "FnApiRunner"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


_PROC = Path("/proc/self/stat").exists()  # Linux; elsewhere liveness is checked with kill(pid, 0)


def _process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None if gone or a zombie.

    Recorded at submit and compared later, so a recycled pid is not mistaken for the job.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalLauncher:
    """Run Beam jobs locally, detached, with a job registry under ``registry_dir``.

    ``runner_args``: extra Beam options for every job (e.g. ``--direct_num_workers=2``).
    """

    def __init__(self, registry_dir: Path | str, runner_args: tuple[str, ...] = ()):
        self.registry_dir = Path(registry_dir)
        self.jobs_dir = self.registry_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.runner_args = tuple(runner_args)
        self._held = threading.local()

    # -- registry ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The registry lock (``flock``), re-entrant: ``flock`` is per open file, so a nested
        acquisition through a second file would wait for itself."""
        if getattr(self._held, "depth", 0):
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        with open(self.registry_dir / "registry.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _path(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise LookupError(f"no local job with id {job_id!r}")
        return self.jobs_dir / f"{job_id}.json"

    def read(self, job_id: str) -> dict[str, Any]:
        """The registry record of a job; a dead process's unfinished state is corrected to FAILED
        (CANCELLED if it was being cancelled)."""
        path = self._path(job_id)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise LookupError(f"no local job with id {job_id!r} in {self.jobs_dir}") from None
        if JobState(record["state"]) not in TERMINAL_STATES and not self._alive(record):
            with self._locked():
                record = json.loads(path.read_text())
                if JobState(record["state"]) not in TERMINAL_STATES and not self._alive(record):
                    cancelling = JobState(record["state"]) is JobState.CANCELLING
                    record.update(
                        state=(JobState.CANCELLED if cancelling else JobState.FAILED).value,
                        end_time=_now(),
                        errors=[*record.get("errors", []), "the job's process exited without a final state"],
                    )
                    self._write(record)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        path = self._path(record["id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)

    def update(self, job_id: str, **changes: Any) -> None:
        """Change fields of a job's record (used by the job process to report its state).

        A final state is never changed (a job found dead and reported FAILED stays FAILED), and a
        job being cancelled only moves on to a final state.
        """
        with self._locked():
            record = json.loads(self._path(job_id).read_text())
            current, new = JobState(record["state"]), changes.get("state")
            if new is not None and (
                current in TERMINAL_STATES
                or (current is JobState.CANCELLING and JobState(new) not in TERMINAL_STATES)
            ):
                changes = {k: v for k, v in changes.items() if k not in ("state", "start_time", "end_time")}
            record.update(changes)
            self._write(record)

    @staticmethod
    def _alive(record: dict[str, Any]) -> bool:
        pid, ticks = record.get("pid"), record.get("pid_start_ticks")
        if pid is None:
            return False
        if not _PROC:
            return _pid_alive(pid)
        return ticks is not None and _process_start_ticks(pid) == ticks

    def _records(self) -> list[dict[str, Any]]:
        return [self.read(path.stem) for path in sorted(self.jobs_dir.glob("*.json"))]

    # -- JobLauncher -----------------------------------------------------------------------------

    def list_jobs(self, job_name: str) -> list[JobInfo]:
        return [_info(record) for record in self._records() if record["name"] == job_name]

    def get_job(self, job_id: str) -> JobInfo:
        return _info(self.read(job_id))

    def submit(self, spec: JobSpec) -> str:
        with self._locked():
            for record in self._records():
                if record["name"] == spec.name and JobState(record["state"]) not in TERMINAL_STATES:
                    raise JobAlreadyExistsError(f"job {spec.name} is already active as {record['id']}")
            job_id = f"{dt.datetime.now(dt.UTC):%Y-%m-%d_%H_%M_%S}-{uuid.uuid4().hex[:12]}"
            log_path = self.jobs_dir / f"{job_id}.log"
            record = {
                "id": job_id,
                "name": spec.name,
                "state": JobState.PENDING.value,
                "labels": dict(spec.labels),
                "pipeline_args": list(spec.pipeline_args),
                "create_time": _now(),
                "pid": None,
                "pid_start_ticks": None,
                "log": str(log_path),
                "errors": [],
            }
            self._write(record)
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tasks.crm_export.launchers.local",
                        "--registry",
                        str(self.registry_dir),
                        "--job-id",
                        job_id,
                        "--",
                        *self.runner_args,
                        *spec.pipeline_args,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # survives the flow run that launched it
                    cwd=Path(__file__).resolve().parents[3],
                )
            record.update(pid=process.pid, pid_start_ticks=_process_start_ticks(process.pid))
            self._write(record)
        assert process.stdin is not None
        process.stdin.write(spec.api_key.get_secret_value().encode() + b"\n")
        process.stdin.close()
        return job_id

    def cancel(self, job_id: str) -> None:
        """Cancel a job as Dataflow's cancel does: its state becomes CANCELLING, its process group gets
        SIGTERM, and the job ends CANCELLED. A job already in a final state is left as it is. Raises
        ``LookupError`` for an unknown id."""
        record = self.read(job_id)  # a dead process's job is in a final state after this
        if JobState(record["state"]) in TERMINAL_STATES:
            return
        self.update(job_id, state=JobState.CANCELLING.value)
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(record["pid"], signal.SIGTERM)

    def job_errors(self, job_id: str) -> list[str]:
        return list(self.read(job_id).get("errors", []))

    def job_metrics(self, job_id: str) -> ExportMetrics:
        record = self.read(job_id)
        batch_size = record.get("batch_size")
        return ExportMetrics(
            Counters.from_names(record.get("counters", {})),
            Distribution(*(batch_size[key] for key in ("count", "sum", "min", "max")))
            if batch_size
            else None,
            record.get("resources", {}),
        )


def _info(record: dict[str, Any]) -> JobInfo:
    state_time = record.get("end_time") or record.get("start_time") or record["create_time"]
    return JobInfo(
        id=record["id"],
        name=record["name"],
        state=JobState(record["state"]),
        create_time=dt.datetime.fromisoformat(record["create_time"]),
        labels=record.get("labels", {}),
        state_time=dt.datetime.fromisoformat(state_time),
    )


# -- the job process ---------------------------------------------------------------------------


def run_job(registry_dir: Path, job_id: str, pipeline_args: list[str], api_key: str) -> int:
    """Run one registered job to its end on the local runner, reporting state, counters and errors."""
    cancelled = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal cancelled
        cancelled = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)  # first: a cancel during the imports still ends CANCELLED
    launcher = LocalLauncher(registry_dir)
    try:
        import resource
        import time

        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions

        from pipelines.crm_export.api_key import ApiKey
        from pipelines.crm_export.pipeline import build_pipeline, failure_counters, pipeline_metrics
    except KeyboardInterrupt:
        launcher.update(job_id, state=JobState.CANCELLED.value, end_time=_now(), errors=["cancelled"])
        return 1

    launcher.update(job_id, state=JobState.RUNNING.value, start_time=_now())
    started = time.monotonic()
    pipeline = None
    try:
        options = PipelineOptions(
            [f"--runner={LOCAL_RUNNER}", f"--job_name={launcher.read(job_id)['name']}", *pipeline_args]
        )
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, ApiKey(api_key))
        result = pipeline.run()
        result.wait_until_finish()
        metrics = pipeline_metrics(result)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        resources = {
            "wall_seconds": round(time.monotonic() - started, 3),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "max_rss_bytes": usage.ru_maxrss * 1024,
        }
        launcher.update(
            job_id,
            counters=metrics.counters.to_names(),
            batch_size=dataclasses.asdict(metrics.batch_size) if metrics.batch_size else None,
            resources=resources,
        )
        check_accounting(metrics.counters)
    except BaseException as exc:  # noqa: BLE001 - every way out must leave a final state
        if pipeline is not None:  # Beam's run() removes its temporary directory; a cancel before it would not
            shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        state = JobState.CANCELLED if cancelled else JobState.FAILED
        message = "cancelled" if cancelled else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        record = launcher.read(job_id)
        # The failed pipeline's metrics are lost with it: what the failure stands for (a refused key) is
        # reported as the counter Dataflow would report as attempted.
        counted = {} if cancelled else failure_counters(exc)
        launcher.update(
            job_id,
            state=state.value,
            end_time=_now(),
            errors=[*record.get("errors", []), message],
            **({"counters": {**record.get("counters", {}), **counted}} if counted else {}),
        )
        return 1
    launcher.update(job_id, state=JobState.DONE.value, end_time=_now())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one registered local Beam job (internal).")
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    pipeline_args = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args
    api_key = sys.stdin.readline().rstrip("\n")
    sys.stdin.close()
    return run_job(args.registry, args.job_id, pipeline_args, api_key)


if __name__ == "__main__":
    sys.exit(main())
