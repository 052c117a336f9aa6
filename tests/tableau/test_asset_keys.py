"""Asset keys (tasks/tableau/assets.py): a warehouse table's, per warehouse as the OpenLineage naming
spec names its tables, and a Tableau content's."""

from __future__ import annotations

import pytest

from tasks.tableau.assets import content_key, parse_table_key


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("athena://awsdatacatalog/sales/orders", ("athena", "athena", "awsdatacatalog", "sales", "orders")),
        ("redshift://dw.eu-west-1:5439/dev/public/orders", ("redshift", "redshift", "dev", "public", "orders")),
        ("snowflake://acme-prod/ANALYTICS/SALES/ORDERS", ("snowflake", "snowflake", "ANALYTICS", "SALES", "ORDERS")),
        ("bigquery://acme-web/tracking/events", ("bigquery", "bigquery", "acme-web", "tracking", "events")),
        ("postgres://db.internal:5432/app/public/users", ("postgres", "postgres", "app", "public", "users")),
    ],
)  # fmt: skip
def test_each_warehouse_form_names_tableaus_database_schema_and_table(key, expected):
    table = parse_table_key(key)
    assert (table.warehouse, table.connection_type, table.database, table.schema, table.name) == expected
    assert table.key == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("orders", "no <warehouse>:// scheme"),
        ("oracle://db/sales/orders", "unknown warehouse 'oracle'"),
        ("redshift://dw:5439/dev/public/orders", r"does not have the redshift form 'redshift://\{cluster\}\.\{region\}:\{port\}"),
        ("snowflake://acme/DB/S/T", "does not have the snowflake form"),  # no {org}-{account}
        ("bigquery://p/d/t/extra", "does not have the bigquery form"),
        ("athena://awsdatacatalog/sales/order lines", "not a valid Prefect asset key: Asset key cannot contain ' '"),
    ],
)  # fmt: skip
def test_a_bad_key_is_refused_naming_it_and_the_forms(key, message):
    with pytest.raises(ValueError, match=message) as raised:
        parse_table_key(key)
    assert repr(key) in str(raised.value)
    if "valid Prefect" not in message:
        assert "postgres://{host}:{port}/{database}/{schema}/{table}" in str(raised.value)


def test_tableau_content_keys():
    assert content_key("https://10ax.online.tableau.com", "mysite", "workbook", "abc-1") == (
        "tableau://10ax.online.tableau.com/mysite/workbook/abc-1"
    )
    assert (
        content_key("http://127.0.0.1:8080", "", "datasource", "d-1")
        == "tableau://127.0.0.1:8080/default/datasource/d-1"
    )
    with pytest.raises(ValueError, match="use one of datasource, workbook"):
        content_key("https://t.example.com", "s", "view", "v-1")
