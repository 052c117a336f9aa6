"""Saving a PAT pool for the demo, the benchmarks and the tests: its PAT blocks, the pool block and
(by ``deployments.bootstrap``) its global concurrency limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blocks.tableau import TableauPatPool, TableauPersonalAccessToken, TableauSite
from deployments.bootstrap import BootstrapReport, bootstrap_pool_limits


def save_pat_pool(
    pool_block: str,
    site: TableauSite,
    pats: Mapping[str, tuple[str, str]],
    *,
    bootstrap: bool = True,
    fix: bool = False,
    **pool_fields: Any,
) -> tuple[TableauPatPool, BootstrapReport | None]:
    """Save a ``TableauPersonalAccessToken`` block per entry of ``pats`` (block name -> (token name,
    secret)), the ``TableauPatPool`` block ``pool_block`` over them (``pool_fields``: its other
    fields) and, if ``bootstrap``, create its limits (and, with ``fix``, repair drifted ones).
    Returns the pool and the bootstrap's report (None without it).

    Raises:
        RuntimeError: the limits were left missing or drifted (the report's lines say which).
    """
    for block_name, (token_name, secret) in pats.items():
        TableauPersonalAccessToken(token_name=token_name, token_secret=secret).save(
            block_name, overwrite=True
        )
    pool = TableauPatPool(site=site, pat_block_names=list(pats), **pool_fields)
    pool.save(pool_block, overwrite=True)
    if not bootstrap:
        return pool, None
    report = bootstrap_pool_limits(pool, fix=fix)
    if not report.ok:
        raise RuntimeError(f"PAT pool {pool_block!r}: " + "; ".join(report.lines()))
    return pool, report
