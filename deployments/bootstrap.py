"""Create the global concurrency limits of a Tableau PAT pool and of connected apps, idempotently, and
report drift.

``prefect.yaml`` cannot declare global concurrency limits, so this command does::

    python -m deployments.bootstrap --pool-block tableau-pat-pool          # create missing, report drift
    python -m deployments.bootstrap --pool-block tableau-pat-pool --check  # change nothing
    python -m deployments.bootstrap --pool-block tableau-pat-pool --fix    # also repair drift
    python -m deployments.bootstrap --connected-app-block tableau-connected-app   # a connected app's limit

A pool ``P`` of ``K`` PATs needs ``<prefix>-pool`` with limit ``K`` and one ``<prefix>-<PAT block>``
with limit 1 per PAT; a connected app needs its ``concurrency_limit_name`` with limit
``refresh_capacity``; all active and without slot decay. A disabled limit enforces nothing and a
mis-sized one lets two runs share a PAT (or more runs refresh than the site can take): both are drift,
an error unless ``--fix`` repairs it. Without any block option the pool block ``tableau-pat-pool``.
It also creates (and checks) the automations that keep a dead host from losing a run
(``deployments/automations.py``): crash the runs whose heartbeats stop, put back to Scheduled the runs a
worker claimed and never started (``--pending-seconds``, default 120), rerun once the crashed ones.
And it creates the work pools the deployments of ``prefect.yaml`` name (process pools), so that
``prefect --no-prompt deploy --all`` finds them.

A PAT pool or connected app block saved while the Tableau site was a block of its own (before issue
25) holds its site as a ``Tableau Site`` block (a reference to a Site block document, or a site saved
with it). It still loads, with the site's values, and is drift here: ``--fix`` re-saves it with the site
as a field of the block, copied from those values. A referenced Site block document is then no longer
read: edit the site in the pool or app block, and delete the Site block once nothing refers to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.base import BaseWorker

from blocks.tableau import TableauConnectedApp, TableauPatPool
from blocks.tableau.site import saved_as_site_block
from deployments.automations import (
    DEFAULT_PENDING_SECONDS,
    bootstrap_automations,
    check_pending_seconds,
    project_automations,
)
from tasks.config_files import ConfigFileError, describe, key_path, load_yaml_mapping
from tasks.tableau.connected_app import expected_capacity_limit
from tasks.tableau.limits import limit_drift
from tasks.tableau.pat_pool import expected_limits


@dataclass
class BootstrapReport:
    """What bootstrap found and did, one human-readable line per limit."""

    created: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every limit exists as it should after this run."""
        return not self.drift and not self.missing

    def lines(self) -> list[str]:
        return (
            [f"created   {line}" for line in self.created]
            + [f"repaired  {line}" for line in self.repaired]
            + [f"ok        {line}" for line in self.unchanged]
            + [f"MISSING   {line}" for line in self.missing]
            + [f"DRIFT     {line}" for line in self.drift]
        )


def bootstrap_pool_limits(
    pool: TableauPatPool, *, fix: bool = False, check_only: bool = False
) -> BootstrapReport:
    """Create missing limits of ``pool``; report (or, with ``fix``, repair) drifted ones.

    With ``check_only`` nothing is written. Drift: disabled, wrong limit, or slot decay set.
    """
    return bootstrap_limits(expected_limits(pool), fix=fix, check_only=check_only)


def bootstrap_connected_app_limits(
    app: TableauConnectedApp, *, fix: bool = False, check_only: bool = False
) -> BootstrapReport:
    """Create the refresh-capacity limit of ``app`` if missing; report (or, with ``fix``, repair) drift."""
    return bootstrap_limits(expected_capacity_limit(app), fix=fix, check_only=check_only)


def bootstrap_limits(
    limits: dict[str, int], *, fix: bool = False, check_only: bool = False
) -> BootstrapReport:
    """Create the missing limits of ``limits`` (name -> slots); report (or, with ``fix``, repair) drift."""
    report = BootstrapReport()
    with get_client(sync_client=True) as client:
        for name, slots in limits.items():
            try:
                found = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                if check_only:
                    report.missing.append(f"{name} (limit {slots})")
                else:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=slots, active=True)
                    )
                    report.created.append(f"{name} (limit {slots})")
                continue
            problems = limit_drift(found, slots)
            if not problems:
                report.unchanged.append(f"{name} (limit {slots})")
            elif fix and not check_only:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=slots, active=True, slot_decay_per_second=0.0)
                )
                report.repaired.append(f"{name}: was {', '.join(problems)}")
            else:
                report.drift.append(f"{name}: {', '.join(problems)}")
    return report


def bootstrap_site_field(
    block: TableauPatPool | TableauConnectedApp, name: str, *, fix: bool = False, check_only: bool = False
) -> BootstrapReport:
    """Report (or, with ``fix``, repair) the block ``name`` (``block``, as loaded) if its document still
    refers to a separate ``Tableau Site`` block for its site, the shape saved before the site became a
    field: repairing re-saves ``block``, whose site holds the Site block's values. Nothing to report
    otherwise."""
    report = BootstrapReport()
    label = f"{block.get_block_type_name()} block {name!r}"
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            name, block.get_block_type_slug(), include_secrets=False
        )
    references = document.block_document_references
    if not saved_as_site_block(document.data, references):
        return report
    site_block = (references.get("site") or {}).get("block_document") or {}
    source = (
        f"Tableau Site block {site_block['name']!r}"
        if site_block.get("name") and not site_block.get("is_anonymous")
        else "a Tableau Site block"
    )
    if fix and not check_only:
        block.save(name, overwrite=True)
        report.repaired.append(
            f"{label}: was holding its site as {source}; re-saved with the site as its field "
            f"({block.site.server_url}, site {block.site.site_content_url!r})"
        )
    else:
        report.drift.append(
            f"{label}: holds its site as {source} (saved before the site became a field); "
            "--fix re-saves it with the site as its field"
        )
    return report


PREFECT_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"

#: The field of each block type that names its global concurrency limits.
LIMIT_NAME_FIELDS = {
    TableauPatPool: "concurrency_limit_prefix",
    TableauConnectedApp: "concurrency_limit_name",
}


def blocks_sharing_limit_names(block: TableauPatPool | TableauConnectedApp, name: str) -> list[str]:
    """The other saved blocks of ``block``'s type whose limit names are ``block``'s (the same
    ``concurrency_limit_prefix`` of a PAT pool, ``concurrency_limit_name`` of a connected app), by name.

    Two such blocks would hold and size one set of limits: bootstrapping one reports the other's sizes
    as drift, and ``--fix`` would resize them."""
    block_type = type(block)
    field_name = LIMIT_NAME_FIELDS[block_type]
    value = getattr(block, field_name)
    default = block_type.model_fields[field_name].default
    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(
            block_type.get_block_type_slug(), include_secrets=False
        )
    return sorted(
        d.name
        for d in documents
        if d.name
        and d.name != name
        and not d.is_anonymous
        and (d.data or {}).get(field_name, default) == value
    )


def deployment_work_pools(prefect_file: Path = PREFECT_FILE) -> dict[str, str]:
    """The work pools the deployments of ``prefect_file`` name, sorted by name, each with the worker type
    it needs: ``docker`` when its job variables name an ``image`` (``prefect.docker.yaml``), else
    ``process`` (``prefect.yaml``; a prefect file does not state a pool's type).

    Raises:
        ConfigFileError: the file is missing or not YAML, holds a key twice, or its ``deployments`` is
            not a list of mappings whose ``work_pool`` is a mapping with a ``name`` (the message names
            the file, the line and the key path).
    """
    what = "Prefect project file"
    document = load_yaml_mapping(prefect_file, what=what, missing_hint="pass --prefect-file")
    deployments = document.get("deployments") or []

    def refuse(path: tuple[str | int, ...], expected: str, value: object) -> ConfigFileError:
        return ConfigFileError(
            f"{what} {prefect_file}, line {document.line_of(path)}, {key_path(path)}: expected {expected}, "
            f"got {describe(value)}. See Prefect's prefect.yaml reference (deployments[].work_pool.name)."
        )

    if not isinstance(deployments, list):
        raise refuse(("deployments",), "a list of deployments", deployments)
    pools: dict[str, str] = {}
    for i, deployment in enumerate(deployments):
        if not isinstance(deployment, dict):
            raise refuse(("deployments", i), "a deployment (a mapping)", deployment)
        pool = deployment.get("work_pool")
        if pool is None:
            continue
        if not isinstance(pool, dict):
            raise refuse(("deployments", i, "work_pool"), "a mapping with the work pool's name", pool)
        name = pool.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise refuse(("deployments", i, "work_pool", "name"), "the work pool's name (text)", name)
        if name:
            variables = pool.get("job_variables")
            kind = "docker" if isinstance(variables, dict) and variables.get("image") else "process"
            pools[name] = "docker" if pools.get(name) == "docker" else kind
    return dict(sorted(pools.items()))


def bootstrap_work_pools(pools: Mapping[str, str], *, check_only: bool = False) -> BootstrapReport:
    """Create the work pools of ``pools`` (name → type, ``deployment_work_pools``) that are missing, as
    ``prefect work-pool create <name> --type <type>`` does; a pool that exists with another type is
    drift (its workers could not run the deployments), reported and left as it is."""
    report = BootstrapReport()
    with get_client(sync_client=True) as client:
        for name, kind in pools.items():
            try:
                found = client.read_work_pool(name)
            except ObjectNotFound:
                if check_only:
                    report.missing.append(f"work pool {name} ({kind})")
                    continue
                try:
                    client.create_work_pool(
                        WorkPoolCreate(name=name, type=kind, base_job_template=_base_job_template(kind))
                    )
                except ObjectAlreadyExists:  # created meanwhile
                    report.unchanged.append(f"work pool {name}")
                else:
                    report.created.append(f"work pool {name} ({kind})")
                continue
            if found.type != kind:
                report.drift.append(
                    f"work pool {name} is of type {found.type!r}; the deployments need {kind!r}: delete it "
                    f"(prefect work-pool delete {name}) and run this again, or rename the pool in the prefect file"
                )
            else:
                report.unchanged.append(f"work pool {name} ({found.type})")
    return report


def _base_job_template(kind: str) -> dict[str, Any]:
    """The default base job template of the worker type ``kind``, as ``prefect work-pool create --type``
    gives a pool (``process`` is Prefect's; ``docker`` prefect-docker's, a dependency of the project)."""
    import prefect_docker  # noqa: F401  (registers the docker worker type)

    worker = BaseWorker.get_worker_class_from_type(kind)
    if worker is None:
        raise ValueError(f"no worker of type {kind!r} is installed: it cannot make the work pool's template")
    return deepcopy(worker.get_default_base_job_template())


def _pending_seconds(text: str) -> float:
    """``--pending-seconds``: a number ``check_pending_seconds`` accepts, else argparse's usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    try:
        return check_pending_seconds(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.bootstrap", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pool-block", help="name of the Tableau PAT Pool block (default tableau-pat-pool)")
    parser.add_argument(
        "--connected-app-block", action="append", default=[], help="name of a Tableau Connected App block"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="report only; exit 1 on anything missing or drifted"
    )
    mode.add_argument(
        "--fix",
        action="store_true",
        help="also repair drift: re-enable and resize limits, re-save a block saved with its Tableau site as a "
        "separate block (the shape before the site became a field)",
    )
    parser.add_argument(
        "--pending-seconds",
        type=_pending_seconds,
        default=DEFAULT_PENDING_SECONDS,
        help="how long a claimed run may stay Pending before it is put back to Scheduled (default "
        f"{DEFAULT_PENDING_SECONDS}: process workers start a run in 3-15 s, up to 35 s on a loaded host; add "
        "an image pull's time for Docker or Kubernetes pools)",
    )
    parser.add_argument(
        "--prefect-file",
        type=Path,
        default=PREFECT_FILE,
        help="the prefect.yaml whose deployments' work pools are created (default: the project's)",
    )
    args = parser.parse_args(argv)
    pool_block = args.pool_block or (None if args.connected_app_block else "tableau-pat-pool")

    ok = True
    for block_type, name in [
        (TableauPatPool, pool_block),
        *((TableauConnectedApp, a) for a in args.connected_app_block),
    ]:
        if name is None:
            continue
        try:
            block = block_type.load(name)
        except ValueError as exc:
            print(
                f"{block_type.get_block_type_name()} block {name!r} could not be loaded: {exc}",
                file=sys.stderr,
            )
            return 2
        if shared := blocks_sharing_limit_names(block, name):
            field_name = LIMIT_NAME_FIELDS[block_type]
            value = getattr(block, field_name)
            print(
                f"{block_type.get_block_type_name()} block {name!r} has the {field_name} {value!r} of "
                f"{', '.join(repr(n) for n in shared)}: they would hold and size the same global concurrency "
                f"limits, and bootstrapping one would resize the other's. Give each block its own {field_name} "
                f"(e.g. '{value}-{name}'), then run this again.",
                file=sys.stderr,
            )
            return 2
        shape = bootstrap_site_field(block, name, fix=args.fix, check_only=args.check)
        if isinstance(block, TableauPatPool):
            report = bootstrap_pool_limits(block, fix=args.fix, check_only=args.check)
            print(f"PAT pool {name!r}: {len(block.pat_block_names)} PAT(s)")
        else:
            report = bootstrap_connected_app_limits(block, fix=args.fix, check_only=args.check)
            print(f"Connected app {name!r}: refresh capacity {block.refresh_capacity}")
        print("\n".join(f"  {line}" for line in [*shape.lines(), *report.lines()]))
        ok = ok and shape.ok and report.ok
    try:
        pool_types = deployment_work_pools(args.prefect_file)
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    pools = bootstrap_work_pools(pool_types, check_only=args.check)
    print("Work pools of the deployments:\n" + "\n".join(f"  {line}" for line in pools.lines()))
    ok = ok and pools.ok
    automations = bootstrap_automations(
        project_automations(pending_seconds=args.pending_seconds), fix=args.fix, check_only=args.check
    )
    print(
        "Dead hosts' flow runs:\n"
        + "\n".join(f"  {line}" for report in automations for line in report.lines())
    )
    if not ok or not all(report.ok for report in automations):
        print(
            "Limits, blocks, work pools or automations are missing or drifted: run again (without --check) to create what is missing, with --fix to repair drift.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
