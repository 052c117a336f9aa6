"""The PAT pool's promises on a Prefect server as teams run it on several hosts: PostgreSQL + Redis,
two process-worker hosts, deployments as ``prefect.yaml`` defines them (heartbeats, no output piped
through the worker, a concurrency limit of 1 per deployment).

One scenario, run once for the module and all at once on the same stack (each test asserts one
promise of it):

- contention: 3 domain runs on 2 PATs, spread over both hosts;
- a dead host: host A dies (its worker and flow-run processes SIGKILLed) while two domain runs
  hold PATs and their Tableau jobs wait in the backgrounder's queue behind another team's long
  refresh, while a CRM export job launched there runs, and while two more domain runs are claimed by
  its worker but not started (their submission held); a third domain run of that pool is on host B;
- a worker restart: host B's worker process alone is SIGKILLed then (its flow run lives on), and
  started again serving host A's queue too;
- the bootstrap's automations do the rest, nobody acting: the running runs are marked Crashed and run
  again once, the claimed ones are put back to Scheduled; host B completes them all.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.multihost import ROOT, MultiHostStack
from multihost.conftest import (
    LEASE_SECONDS,
    PENDING_SECONDS,
    REPOSSESSOR_LOOP_SECONDS,
    WITHIN_SECONDS,
    host_env,
    wait_for,
)

# One stack and one scenario for the module: with pytest-xdist its tests stay on one worker
# (``--dist loadgroup``); ``make test`` runs this directory as its own pytest run, beside the rest.
pytestmark = [pytest.mark.slow(seconds=140), pytest.mark.timeout(1200), pytest.mark.xdist_group("multihost")]

POOL = "tableau-refresh"
POLL = {"initial_interval": 0.5, "max_interval": 2.0, "backoff": 1.5, "rate_limit_default_wait": 0.5}
API_KEY = "sk-multihost-3f1c"
SITE = "analytics"
CRM_JOB = "crm-export-20261116"  # the job name of the CRM export of shard users_20261116
#: What every run of host A ends within after its death, beyond the lease and the crash detection: the
#: automations' evaluation (seconds), a worker's poll (1 s), a rerun's start and its refresh (the dead
#: site's backgrounder, released once the reruns adopted their jobs: ~10 s of simulated work each).
COMPLETION_MARGIN_SECONDS = 150
#: The held domains' command: the engine starts only once the host's hold file (``MULTIHOST_HOLD_FILE``,
#: host A's) is gone, so that host A's worker claims them and dies before they start.
HELD = ("k3", "k4")
HELD_COMMAND = (
    'sh -c \'while [ -n "$MULTIHOST_HOLD_FILE" ] && [ -e "$MULTIHOST_HOLD_FILE" ]; do sleep 0.2; done; '
    f"exec {sys.executable} -m prefect.engine'"
)
PATS = {f"pat-{i}": f"secret-{i}" for i in range(1, 6)}


def job_variables() -> dict[str, Any]:
    """The job variables ``prefect.yaml`` gives every deployment (heartbeats, no piped output)."""
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["job_variables"]


def standin(**config: Any):
    from devstack.tableau import TableauStandIn, load_config

    pats = [{"name": name, "secret": secret} for name, secret in PATS.items()]
    return TableauStandIn(load_config({"site_content_url": SITE, "pats": pats, **config})).start()


def create_pool(name: str, url: str, pats: list[str]):
    """A PAT pool block ``name`` of ``pats`` (PAT blocks ``<name>-<pat>``) with its limits."""
    from blocks import TableauSite
    from devstack.pat_pool import save_pat_pool

    pool, _ = save_pat_pool(
        name,
        TableauSite(server_url=url, site_content_url=SITE, api_version="3.29"),
        {f"{name}-{pat}": (pat, PATS[pat]) for pat in pats},
        concurrency_limit_prefix=name,
        lease_duration_seconds=LEASE_SECONDS,
        acquire_timeout_seconds=600,
    )
    return pool


def write_domains(path: Path, pool: str, contents: dict[str, list[str]]) -> str:
    body = {
        "defaults": {"pat_pool_block": pool, "timeout_seconds": 900},
        "domains": {
            domain: {
                "upstream": {"flow": f"{domain}-pipeline"},
                "datasources": [{"project": "Ops", "name": n} for n in names],
            }
            for domain, names in contents.items()
        },
    }
    path.write_text(yaml.safe_dump(body))
    return str(path)


def run(deployment: str, work_queue_name: str | None = None):
    from prefect.deployments import run_deployment

    return run_deployment(deployment, timeout=0, work_queue_name=work_queue_name).id


class Api:
    """What the scenario reads from the stack's API, through one client: the scenario polls several
    times a second, and a new client per read cost ~30 ms of CPU each (its HTTP client and TLS context)."""

    def __init__(self, client):
        self.client = client

    def state(self, flow_run_id):
        return self.client.read_flow_run(flow_run_id).state

    def active_slots(self, name: str) -> int:
        return self.client.read_global_concurrency_limit_by_name(name).active_slots

    def logs(self, flow_run_id) -> list[str]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        found = self.client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [log.message for log in found]

    def held_pat(self, flow_run_id) -> str | None:
        """The PAT block a domain run said it holds ("Domain ... holds PAT '...'")."""
        for message in self.logs(flow_run_id):
            if match := re.search(r"holds PAT '([^']+)'", message):
                return match[1]
        return None

    def artifact_rows(self, flow_run_id, key: str) -> list[dict[str, Any]]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        (artifact,) = self.client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
        return json.loads(artifact.data) if artifact.type == "table" else [{"markdown": artifact.data}]

    def tasks_completed(self, flow_run_id, prefix: str) -> int:
        """How many task runs named ``prefix…`` of the flow run completed (one per execution)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = self.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        return sum(1 for t in tasks if t.name.startswith(prefix) and t.state and t.state.is_completed())

    def run_count(self, flow_run_id) -> int:
        return self.client.read_flow_run(flow_run_id).run_count

    def history(self, flow_run_id) -> list[tuple[str, str, float]]:
        """The flow run's states as (name, message, timestamp in epoch seconds), oldest first."""
        states = sorted(self.client.read_flow_run_states(flow_run_id), key=lambda state: state.timestamp)
        return [(state.name, state.message or "", state.timestamp.timestamp()) for state in states]


@dataclass
class Outcome:
    """What the scenario did and measured (times in seconds after host A's death)."""

    contention: dict[str, Any] = field(default_factory=dict)
    dead: dict[str, Any] = field(default_factory=dict)
    crm: dict[str, Any] = field(default_factory=dict)
    restart: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def outcome(stack: MultiHostStack, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    from prefect import deploy
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from blocks import GenericCrmEndpoint
    from deployments.automations import bootstrap_automations, project_automations
    from devstack.bigquery_emulator import BigQueryEmulator
    from devstack.crms import CrmStandIn
    from devstack.tableau.config import content_id
    from devstack.user_rows import load_shard, shard_rows
    from flows.crm_export.export import crm_export
    from flows.tableau.refresh import refresh_domain
    from tasks.crm_export.launchers.local import LocalLauncher
    from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings

    tmp = tmp_path_factory.mktemp("scenario")
    result = Outcome()
    automations = project_automations(within_seconds=WITHIN_SECONDS, pending_seconds=PENDING_SECONDS)
    assert all(report.ok for report in bootstrap_automations(automations))

    # Contention: 3 domains of 2 short data sources each, on 2 PATs.
    contention_site = standin(
        projects=["Ops"],
        datasources=[
            {"project": "Ops", "name": f"c{i}-{j}", "duration_seconds": [100, 300]}
            for i in range(3)
            for j in range(2)
        ],
        workbooks=[],
        backgrounder_slots=4,
        time_scale=100,
    )
    create_pool("contention", contention_site.url, ["pat-1", "pat-2"])
    contention_domains = write_domains(
        tmp / "contention.yaml", "contention", {f"c{i}": [f"c{i}-0", f"c{i}-1"] for i in range(3)}
    )
    # The dead host: one backgrounder slot, taken by another team's long refresh (the "blocker"),
    # so that the domains' jobs wait in its queue, in flight, until the test cancels it.
    dead_site = standin(
        projects=["Ops"],
        datasources=[
            {"project": "Ops", "name": "blocker", "duration_seconds": 10**7},
            *({"project": "Ops", "name": f"k{i}", "duration_seconds": 200} for i in range(5)),
        ],
        workbooks=[],
        backgrounder_slots=1,
        time_scale=100,
    )
    dead_pool = create_pool("deadhost", dead_site.url, ["pat-3", "pat-4", "pat-5"])
    dead_domains = write_domains(tmp / "deadhost.yaml", "deadhost", {f"k{i}": [f"k{i}"] for i in range(5)})
    hold = tmp / "hold-host-a"  # while it exists, host A's held runs stay claimed and unstarted
    hold.touch()
    blocker = dead_site.site.refresh("datasource", content_id("datasource", "Ops", "blocker"), False)

    # The CRM export: a shard in the BigQuery emulator, the API key block, and a job registry both hosts reach.
    bigquery = BigQueryEmulator().start()
    source = BigQuerySource(
        project=bigquery.project,
        dataset="crm",
        table_prefix="users",
        api_endpoint=bigquery.url,
        storage_api_endpoint=bigquery.storage_url,
    )
    load_shard(bigquery.client(), source.table(dt.date(2026, 11, 16)), shard_rows(3_000))
    crm = CrmStandIn(api_key=API_KEY, db_path=tmp / "crm.sqlite3").start()
    # Held until released: 60 batches, 4 in flight, 20 s each, i.e. 5 minutes unless released.
    crm.configure(slow_rate=1.0, slow_seconds=20.0)
    secret = f"crm-api-key-{uuid.uuid4().hex[:6]}"
    Secret(value=API_KEY).save(secret)
    GenericCrmEndpoint(url=crm.batch_url, api_key_block=f"secret/{secret}").save(secret)
    registry = tmp / "shared" / "crm-jobs"

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        for queue in ("host-a", "host-b"):
            client.create_work_queue(name=queue, work_pool_name=POOL)
        api = Api(client)

        refresh = refresh_domain.from_source(str(ROOT), "flows/tableau/refresh.py:refresh_domain")
        export = crm_export.from_source(str(ROOT), "flows/crm_export/export.py:crm_export")
        common = dict(concurrency_limit=1, job_variables=job_variables())
        placement = {
            "c0": "host-a",
            "c1": "host-b",
            "c2": "host-b",
            "k0": "host-a",
            "k1": "host-a",
            "k2": "host-b",
            "k3": "host-a",  # held: claimed by host A, not started when it dies
            "k4": "host-a",
        }
        deployments = [
            refresh.to_deployment(
                name=domain,
                work_queue_name=queue,
                parameters={
                    "domain": domain,
                    "config_path": contention_domains if domain.startswith("c") else dead_domains,
                    "poll_policy": POLL,
                },
                tags=["tableau", f"domain-{domain}"],
                **(
                    {**common, "job_variables": {**common["job_variables"], "command": HELD_COMMAND}}
                    if domain in HELD
                    else common
                ),
            )
            for domain, queue in placement.items()
        ]
        deployments.append(
            export.to_deployment(
                name="crm",
                work_queue_name="host-a",
                parameters={
                    "source": source.model_dump(mode="json"),
                    "crm": CrmSettings(block=f"generic-crm-endpoint/{secret}", batch_size=100).model_dump(
                        mode="json"
                    ),
                    "runner": LocalRunnerSettings(registry_dir=registry).model_dump(mode="json"),
                    "dead_letter_location": str(tmp / "dead-letters"),
                    "poll": {"interval_seconds": 0.5, "timeout_seconds": 900},
                },
                tags=["crm"],
                **common,
            )
        )
        deploy(
            *deployments,
            work_pool_name=POOL,
            build=False,
            push=False,
            print_next_steps_message=False,
            ignore_warnings=True,
        )

        env = host_env(stack.workdir)
        host_a = stack.add_host(
            "host-a", POOL, work_queues=["host-a"], env={**env, "MULTIHOST_HOLD_FILE": str(hold)}
        )
        host_b = stack.add_host("host-b", POOL, work_queues=["host-b"], env=env)
        launcher = LocalLauncher(registry)
        try:
            runs = {name: run(f"refresh-tableau-domain/{name}") for name in placement if name not in HELD}
            runs["crm"] = run("crm-export/crm")

            def jobs_of(domains):
                return {j["name"] for j in dead_site.site.audit()["jobs"]} >= set(domains)

            wait_for(
                lambda: all(api.state(runs[f"c{i}"]).is_final() for i in range(3)), 600, "the contention runs"
            )
            wait_for(lambda: jobs_of(["k0", "k1", "k2"]), 600, "the dead-host domains' jobs")
            wait_for(
                lambda: any(j.state.value == "JOB_STATE_RUNNING" for j in launcher.list_jobs(CRM_JOB)),
                600,
                "the CRM job",
            )
            # The held runs are created last, so that they are Pending for less than PENDING_SECONDS
            # when host A dies (the automation cannot tell a slow start from a dead host's claim).
            runs.update({name: run(f"refresh-tableau-domain/{name}") for name in HELD})
            wait_for(
                lambda: (
                    all(api.state(runs[name]).is_pending() for name in HELD)
                    and len(host_a.flow_run_pids()) >= 3 + len(HELD)
                ),
                60,
                "host A's claim of the held runs",
            )
            result.contention = {
                "states": {f"c{i}": api.state(runs[f"c{i}"]).name for i in range(3)},
                "audit": contention_site.site.audit(),
                "hosts": {runs[f"c{i}"]: placement[f"c{i}"] for i in range(3)},
            }
            dead_pats = {api.held_pat(runs["k0"]), api.held_pat(runs["k1"])}
            assert None not in dead_pats, "the dead host's domains hold no PAT"
            dead_limits = [dead_pool.pat_limit_names()[pat] for pat in dead_pats]
            (crm_job,) = launcher.list_jobs(CRM_JOB)
            with stack.redis.client() as redis:  # the leases of the held PATs, in Redis (prefect-redis)
                result.dead["redis_leases"] = len(redis.keys("prefect:concurrency:lease:*"))

            # Host A dies with its flow runs: k0, k1 and the CRM export's running, k3 and k4 claimed.
            killed = host_a.kill_host()
            killed_at, killed_at_epoch = time.monotonic(), time.time()
            result.dead.update(killed=killed, pats=dead_pats)
            # Host B's worker restarts (its flow run, k2, lives on), serving host A's queue too.
            orphans = host_b.kill_worker()
            host_b.work_queues = ["host-b", "host-a"]
            host_b.start()
            result.restart = {"orphans": orphans}

            dead = ("k0", "k1", *HELD)
            freed_at, released = None, set()
            deadline = killed_at + 900
            while time.monotonic() < deadline:
                now = time.monotonic() - killed_at
                if freed_at is None and all(api.active_slots(limit) == 0 for limit in dead_limits):
                    freed_at = now
                if "blocker" not in released and dead_site.site.audit()["conflict_requests"] >= 2:
                    dead_site.site.cancel(blocker.id)  # both reruns adopted their jobs: let the queue move
                    released.add("blocker")
                if "crm" not in released and api.tasks_completed(runs["crm"], "launch_export_job") >= 2:
                    crm.configure(slow_rate=0.0)  # the rerun launched (adopting): let the job finish
                    released.add("crm")
                finals = [api.state(runs[n]) for n in ("k2", *dead, "crm")]
                if all(s.is_final() for s in finals) and freed_at is not None:
                    break
                time.sleep(0.5)
            history = {n: api.history(runs[n]) for n in (*dead, "crm")}

            def after_kill(state_name: str) -> dict[str, float]:
                """Seconds from the kill to each run's first state ``state_name``."""
                return {
                    n: next(at for name, _, at in states if name == state_name) - killed_at_epoch
                    for n, states in history.items()
                    if any(name == state_name for name, _, _ in states)
                }

            # From the states' own timestamps: a run that completes between two polls is not missed.
            crashed_at, rescheduled_at = after_kill("Crashed"), after_kill("Rescheduled")
            completed_at = after_kill("Completed")
            print(f"\nDead host's PATs free again {freed_at} s after the kill (lease {LEASE_SECONDS} s)")
            print(
                f"Crashed after {crashed_at} s; put back after {rescheduled_at} s; completed after {completed_at} s"
            )

            result.dead.update(
                freed_after=freed_at,
                crashed_after=crashed_at,
                rescheduled_after=rescheduled_at,
                completed_after=completed_at,
                states={n: api.state(runs[n]) for n in dead},
                history=history,
                run_counts={n: api.run_count(runs[n]) for n in (*dead, "crm")},
                survivor=api.state(runs["k2"]),
                rows={
                    n: api.artifact_rows(runs[n], f"tableau-refresh-{n}")
                    for n in dead
                    if api.state(runs[n]).is_completed()
                },
                pats={n: api.held_pat(runs[n]) for n in dead},
                dead_pats=dead_pats,
                audit=dead_site.site.audit(),
            )
            result.crm = {
                "job": crm_job,
                "state": api.state(runs["crm"]),
                "artifact": api.artifact_rows(runs["crm"], "crm-export")
                if api.state(runs["crm"]).is_completed()
                else [],
                "jobs": launcher.list_jobs(CRM_JOB),
                "stats": crm.stats(),
            }
            result.restart.update(survivor=api.state(runs["k2"]), log="\n".join(api.logs(runs["k2"])))
        finally:
            # A CRM job outlives the flow run and the host that launched it: stop the hosts (no flow
            # run launches another), then cancel what is left, then (whatever happened) the servers.
            try:
                host_a.stop()
                host_b.stop()
                for job in launcher.list_jobs(CRM_JOB):
                    launcher.cancel(job.id)
                wait_for(
                    lambda: all(job.terminal for job in launcher.list_jobs(CRM_JOB)),
                    60,
                    "the CRM jobs to end",
                )
            finally:
                crm.stop()
                bigquery.stop()
                contention_site.stop()
                dead_site.stop()
    return result


def assert_no_session_overlap(audit: dict[str, Any]) -> None:
    """Every session of a PAT ended before the next sign-in with it (a session whose holder died is
    ended by the next sign-in: "superseded", never used after)."""
    sessions = defaultdict(list)
    for session in audit["sessions"]:
        sessions[session["pat"]].append(session)
    for pat, held in sessions.items():
        held.sort(key=lambda s: s["signed_in_at"])
        for earlier, later in zip(held, held[1:], strict=False):
            assert earlier["ended_at"] is not None, (pat, held)
            assert earlier["ended_at"] <= later["signed_in_at"] + 1e-6, (pat, held)


def test_more_domain_runs_than_pats_across_two_hosts_all_complete_without_sharing_a_pat(outcome):
    contention = outcome.contention
    audit = contention["audit"]
    assert contention["states"] == {"c0": "Completed", "c1": "Completed", "c2": "Completed"}
    assert set(contention["hosts"].values()) == {"host-a", "host-b"}
    assert audit["invalidated_token_requests"] == 0
    assert sum(audit["sign_ins"].values()) == 3  # one per run
    assert set(audit["sign_ins"]) <= {"pat-1", "pat-2"}
    assert all(s["end_reason"] == "signed_out" for s in audit["sessions"])
    assert_no_session_overlap(audit)
    assert len(audit["jobs_created"]) == 6
    assert set(audit["jobs_created"].values()) == {1}


def test_a_dead_hosts_pats_come_back_within_the_lease_and_the_survivor_completes(outcome):
    dead = outcome.dead
    assert len(dead["killed"]) >= 3 + len(HELD)  # k0, k1, the CRM export's flow run and the held runs
    assert dead["survivor"].is_completed()
    # The slots are freed by lease expiry, not released: after the last renewal (every 3/4 of the
    # lease) plus the lease, plus the repossessor's loop and this test's polling.
    assert dead["freed_after"] is not None
    assert LEASE_SECONDS / 4 - 1 < dead["freed_after"] <= LEASE_SECONDS + REPOSSESSOR_LOOP_SECONDS + 14
    assert dead["audit"]["invalidated_token_requests"] == 0
    assert_no_session_overlap(dead["audit"])


def names(history: list[tuple[str, str, float]]) -> list[str]:
    """The state names of a history, without the worker's Submitting (whether it shows depends on timing)."""
    return [name for name, _, _ in history if name != "Submitting"]


def test_the_running_runs_of_a_dead_host_are_marked_crashed_by_the_heartbeat_automation(outcome):
    dead = outcome.dead
    for name in ("k0", "k1", "crm"):
        crashed = [message for state, message, _ in dead["history"][name] if state == "Crashed"]
        assert len(crashed) == 1, (name, dead["history"][name])
        assert "no heartbeat" in crashed[0], (name, dead["history"][name])
        assert dead["crashed_after"][name] <= WITHIN_SECONDS + 15, dead["crashed_after"]


def test_the_crashed_runs_run_again_once_by_the_rerun_automation_and_adopt_their_jobs(outcome):
    """No one reruns anything: the automation puts a run crashed for no heartbeat back to Scheduled
    (AwaitingRetry) once, the same flow run runs again on host B and adopts its Tableau job."""
    dead = outcome.dead
    for name in ("k0", "k1"):
        history = names(dead["history"][name])
        assert history[-4:] == ["AwaitingRetry", "Pending", "Running", "Completed"], (name, history)
        assert history.count("Crashed") == 1
        assert history.index("Crashed") < history.index("AwaitingRetry")
        assert dead["run_counts"][name] == 2
        (row,) = dead["rows"][name]
        assert row["status"] == "succeeded", row
        assert row["job"].endswith("(adopted)"), row
    assert dead["audit"]["jobs_created"] == {
        "datasource:Ops/blocker": 1,
        **{f"datasource:Ops/k{i}": 1 for i in range(5)},
    }
    assert dead["audit"]["conflict_requests"] == 2  # the two adoptions, nothing else
    assert {dead["pats"]["k0"], dead["pats"]["k1"]} & dead["dead_pats"], (
        "no rerun leased a PAT of the dead host"
    )


def test_runs_claimed_by_a_dead_host_but_not_started_are_put_back_and_run_on_the_other(outcome):
    """A run Pending on a dead host never heartbeats, so the heartbeat automation cannot see it: the
    stuck-Pending automation puts it back to Scheduled ("Rescheduled") and host B runs it, once."""
    dead = outcome.dead
    for name in HELD:
        history = names(dead["history"][name])
        assert "Crashed" not in history, history
        assert "Running" not in history[: history.index("Rescheduled")], history
        assert history[-3:] == ["Pending", "Running", "Completed"], (name, history)
        assert dead["run_counts"][name] == 1
        assert dead["rescheduled_after"][name] <= PENDING_SECONDS + 15, dead["rescheduled_after"]
        (row,) = dead["rows"][name]
        assert row["status"] == "succeeded", row
        assert not row["job"].endswith("(adopted)"), row


def test_every_run_of_the_dead_host_completes_within_the_bound_nobody_acting(outcome):
    dead = outcome.dead
    bound = LEASE_SECONDS + WITHIN_SECONDS + COMPLETION_MARGIN_SECONDS
    assert all(state.is_completed() for state in dead["states"].values()), dead["states"]
    assert outcome.crm["state"].is_completed(), outcome.crm["state"]
    assert set(dead["completed_after"]) == {"k0", "k1", *HELD, "crm"}
    assert max(dead["completed_after"].values()) <= bound, dead["completed_after"]


def test_a_crm_export_killed_on_one_host_runs_again_on_the_other_and_adopts_its_job(outcome):
    crm = outcome.crm
    history = names(outcome.dead["history"]["crm"])
    assert history.count("Crashed") == 1, history
    assert history[-1] == "Completed", history
    assert outcome.dead["run_counts"]["crm"] == 2
    assert [job.id for job in crm["jobs"]] == [crm["job"].id]  # one job in total
    (job_line,) = [line for line in crm["artifact"][0]["markdown"].splitlines() if line.startswith("| Job |")]
    assert f"({crm['job'].id}), adopted, JOB_STATE_DONE" in job_line, job_line
    assert crm["stats"]["distinct_users"] == 3_000
    assert crm["stats"]["duplicate_deliveries"] == 0


def test_a_worker_restart_does_not_crash_the_runs_it_started(outcome):
    """Prefect pipes a flow run's output through its worker unless ``stream_output`` is off; after the
    worker died, the next log line hit the broken pipe and rich's console ended the run with
    SystemExit ("Execution was aborted by Python system exit call"). prefect.yaml turns it off."""
    restart = outcome.restart
    assert restart["orphans"], "the worker had no flow run to leave behind"
    assert restart["survivor"].is_completed(), restart["survivor"]
    assert "Broken pipe" not in restart["log"]


def test_the_leases_lived_in_redis_and_the_runs_in_postgres(stack, outcome):
    # While k0, k1 and k2 held PATs: one lease each (its pool and PAT slots), and the 4 deployments' slots.
    assert outcome.dead["redis_leases"] >= 6
    assert (
        stack.backend.server_env()["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"]
        == "prefect_redis.lease_storage"
    )
    flow_runs = subprocess.run(
        [stack.postgres.bindir / "psql", "-h", "127.0.0.1", "-p", str(stack.postgres.port), "-U", "postgres"]
        + ["-d", "prefect", "-tAc", "select count(*) from flow_run"],
        capture_output=True,
        text=True,
        check=True,
    )
    # 3 + 5 domain runs and the CRM export: the automations ran the same flow runs again, made none.
    assert int(flow_runs.stdout) == 9


@pytest.mark.parametrize("auth_string", [None, "flows:wrong"], ids=["none", "wrong"])
def test_the_server_refuses_a_client_without_its_auth_string(stack, outcome, auth_string):
    """The stack runs with basic auth (``PREFECT_SERVER_API_AUTH_STRING``): the hosts and this module's
    clients send it (the scenario ran), a client without it or with another gets 401."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    settings = (
        {"restore_defaults": {PREFECT_API_AUTH_STRING}}
        if auth_string is None
        else {"updates": {PREFECT_API_AUTH_STRING: auth_string}}
    )
    with temporary_settings(**settings):
        with get_client(sync_client=True) as client:
            assert client.api_healthcheck() is None  # health stays open, for load balancers' probes
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.read_flow_runs(limit=1)
    assert refused.value.response.status_code == 401
