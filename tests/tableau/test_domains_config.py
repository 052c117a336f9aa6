"""tableau_domains.yaml: defaults and entries merge as documented; YAML's anchors work; errors are
``DomainConfigError``s. The bad inputs and their messages: tests/test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config_files import ConfigFileError
from tasks.tableau.domains import DomainConfigError, load_domain, load_domains
from tasks.tableau.refresh import ContentRef

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "tableau_domains.yaml"
    file.write_text(text)
    return file


def test_the_projects_file_loads_in_file_order_with_the_defaults_applied():
    domains = load_domains(ROOT / "tableau_domains.yaml")
    assert list(domains) == ["sales", "marketing", "finance", "operations"]
    sales, marketing, operations = domains["sales"], domains["marketing"], domains["operations"]
    assert (sales.name, sales.timeout_seconds, sales.cron) == ("sales", 1800, "0 7 * * *")
    assert (marketing.timeout_seconds, marketing.pat_pool_block) == (3600, "tableau-pat-pool")
    # A domain that names a connected app takes no PAT pool from the defaults.
    assert (operations.connected_app_block, operations.pat_pool_block) == ("tableau-connected-app", None)
    assert sales.content()[0] == ContentRef("datasource", "Sales", "Orders")
    assert sales.content()[-1] == ContentRef("workbook", "Sales", "Regional Performance")


def test_an_entry_wins_over_the_defaults_even_with_null(tmp_path):
    file = write(
        tmp_path,
        "defaults: {pat_pool_block: pool, cron: '0 7 * * *', incremental: true}\n"
        "domains:\n"
        "  sales: {cron: null, incremental: false, upstream: {flow: s}, workbooks: [{name: Overview}]}\n"
        "  hr: {upstream: {flow: h}, datasources: [{name: People}]}\n",
    )
    sales, hr = load_domains(file).values()
    assert (sales.cron, sales.incremental, sales.pat_pool_block) == (None, False, "pool")
    assert (hr.cron, hr.incremental) == ("0 7 * * *", True)


def test_anchors_and_merge_keys_work_and_a_merged_key_is_no_duplicate(tmp_path):
    sales = "&sales {upstream: {flow: sales-pipeline}, timeout_seconds: 600, datasources: [{name: Orders}]}"
    file = write(
        tmp_path,
        f"defaults: {{pat_pool_block: pool}}\ndomains:\n  sales: {sales}\n  sales-eu: {{<<: *sales, timeout_seconds: 900}}\n",
    )
    domains = load_domains(file)
    assert (domains["sales"].timeout_seconds, domains["sales-eu"].timeout_seconds) == (600, 900)
    assert domains["sales-eu"].upstream.flow == "sales-pipeline"
    file.write_text(
        file.read_text().replace("timeout_seconds: 900}", "timeout_seconds: 900, timeout_seconds: 60}")
    )
    with pytest.raises(
        DomainConfigError,
        match=r", line 4, domains\.sales-eu\.timeout_seconds: duplicate key 'timeout_seconds'",
    ):
        load_domains(file)


def test_every_error_is_a_domain_config_error_and_a_value_error(tmp_path):
    file = write(tmp_path, "domains: {sales: {upstream: {flow: s}, datasources: [{name: O}]}}\n")
    with pytest.raises(DomainConfigError) as raised:
        load_domain("sales", file)
    assert isinstance(raised.value, ConfigFileError)
    assert isinstance(raised.value, ValueError)
    with pytest.raises(DomainConfigError, match=r"Unknown domain 'hr': .* defines \[\]"):
        load_domain("hr", write(tmp_path, ""))  # an empty file defines no domain


def test_a_domain_takes_content_from_lineage_alone_or_with_its_lists(tmp_path):
    file = write(
        tmp_path,
        "defaults: {pat_pool_block: pool, refresh: stale_only, debounce_seconds: 60}\n"
        "domains:\n"
        "  web: {upstream_tables: ['bigquery://acme-web/tracking/events']}\n"
        "  sales:\n"
        "    upstream: {flow: sales-pipeline}\n"
        "    refresh: all\n"
        "    upstream_tables: [athena://awsdatacatalog/sales/orders, 'redshift://dw.eu-west-1:5439/dev/public/returns']\n"
        "    datasources: [{project: Sales, name: Targets}]\n",
    )
    web, sales = load_domains(file).values()
    # Lineage only: no lists, and no upstream flow (it runs on its tables' materializations).
    assert (web.upstream, web.content(), web.refresh, web.debounce_seconds) == (None, [], "stale_only", 60)
    assert [(t.warehouse, t.database, t.schema, t.name) for t in web.tables()] == [
        ("bigquery", "acme-web", "tracking", "events")
    ]
    assert sales.refresh == "all"
    assert [t.connection_type for t in sales.tables()] == ["athena", "redshift"]
    assert sales.content() == [ContentRef("datasource", "Sales", "Targets")]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{upstream_tables: ['athena://sales/orders']}", r"upstream_tables\[0\]: table key 'athena://sales/orders' does not have the athena form"),
        ("{upstream_tables: ['mysql://db/sales/orders']}", r"unknown warehouse 'mysql'; use one of: athena://"),
        ("{upstream_tables: [athena://c/s/t, athena://c/s/t]}", r"upstream_tables\[1\] repeats upstream_tables\[0\] \(athena://c/s/t\)"),
        ("{upstream_tables: [athena://c/s/t], debounce_seconds: 5}", r"debounce_seconds: expected a number greater than or equal to 10"),
        ("{upstream_tables: [athena://c/s/t], refresh: stale}", r"refresh: expected 'all' or 'stale_only', got 'stale'"),
        ("{datasources: [{name: O}]}", r"required key 'upstream' .* is missing"),  # lists need an upstream flow
        ("{upstream: {flow: a}}", r"lists no datasources, no workbooks and no upstream_tables"),
    ],
)  # fmt: skip
def test_lineage_settings_are_checked(tmp_path, entry, message):
    with pytest.raises(DomainConfigError, match=message):
        load_domains(write(tmp_path, f"defaults: {{pat_pool_block: pool}}\ndomains:\n  web: {entry}\n"))
