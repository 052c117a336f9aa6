"""SQL lineage (tasks/metadata/lineage/sql.py): a corpus of view and query SQL with known lineage,
asserting exact table- and column-level edges, and the statuses of what cannot be resolved."""

from __future__ import annotations

import pytest

from tasks.metadata.lineage.sql import LineageSchema, SqlLineage, Status

C = "awsdatacatalog"
SHOP = {
    "orders": ["order_id", "customer_id", "amount", "discount", "ordered_at", "region"],
    "customers": ["customer_id", "name", "email", "country"],
    "order_items": ["order_id", "sku", "quantity", "price"],
    "daily_revenue": ["day", "revenue"],
    "customer_totals": ["customer_id", "total"],
}


@pytest.fixture(scope="module")
def analyzer() -> SqlLineage:
    schema = LineageSchema()
    for table, columns in SHOP.items():
        for column in columns:
            schema.add("AwsDataCatalog", "shop", table, column, "string")
    schema.add("AwsDataCatalog", "archive", "orders_2020", "order_id", "bigint")
    schema.add("AwsDataCatalog", "archive", "orders_2020", "amount", "double")
    return SqlLineage(schema)


def t(name: str, database: str = "shop") -> tuple[str, str, str]:
    return (C, database, name)


def edges(result) -> set[tuple[str, str, str]]:
    """Column edges as ``("table.column", "target.column", transformation)``."""
    return {
        (f"{e.source[2]}.{e.source[3]}", f"{e.target[2]}.{e.target[3]}", e.transformation.value)
        for e in result.edges
    }


CORPUS = [
    pytest.param(
        "CREATE TABLE shop.order_report AS SELECT o.order_id, c.name AS customer, o.amount * (1 - o.discount) AS net "
        "FROM orders o JOIN customers c ON o.customer_id = c.customer_id WHERE c.country = 'DE'",
        "CTAS",
        [t("customers"), t("orders")],
        [t("order_report")],
        {
            ("orders.order_id", "order_report.order_id", "IDENTITY"),
            ("customers.name", "order_report.customer", "IDENTITY"),
            ("orders.amount", "order_report.net", "TRANSFORMATION"),
            ("orders.discount", "order_report.net", "TRANSFORMATION"),
        },
        id="join",
    ),
    pytest.param(
        "CREATE TABLE shop.top_customers AS WITH totals AS (SELECT customer_id, SUM(amount) AS total FROM orders "
        "GROUP BY customer_id) SELECT c.email, t.total FROM totals t JOIN customers c ON c.customer_id = t.customer_id",
        "CTAS",
        [t("customers"), t("orders")],
        [t("top_customers")],
        {
            ("customers.email", "top_customers.email", "IDENTITY"),
            ("orders.amount", "top_customers.total", "AGGREGATION"),
        },
        id="cte",
    ),
    pytest.param(
        "INSERT INTO daily_revenue SELECT day, SUM(revenue) FROM (SELECT date_trunc('day', ordered_at) AS day, "
        "amount AS revenue FROM orders WHERE region IN (SELECT country FROM customers)) GROUP BY day",
        "INSERT",
        [t("customers"), t("orders")],
        [t("daily_revenue")],
        {
            ("orders.ordered_at", "daily_revenue.day", "TRANSFORMATION"),
            ("orders.amount", "daily_revenue.revenue", "AGGREGATION"),
        },
        id="subqueries",
    ),
    pytest.param(
        "CREATE OR REPLACE VIEW shop.all_orders AS SELECT order_id, amount FROM orders UNION ALL "
        "SELECT order_id, amount FROM archive.orders_2020",
        "CREATE_VIEW",
        [t("orders_2020", "archive"), t("orders")],
        [t("all_orders")],
        {
            ("orders.order_id", "all_orders.order_id", "IDENTITY"),
            ("orders_2020.order_id", "all_orders.order_id", "IDENTITY"),
            ("orders.amount", "all_orders.amount", "IDENTITY"),
            ("orders_2020.amount", "all_orders.amount", "IDENTITY"),
        },
        id="union",
    ),
    pytest.param(
        "INSERT INTO customer_totals (total, customer_id) SELECT SUM(amount) OVER (PARTITION BY customer_id), "
        "customer_id FROM orders",
        "INSERT",
        [t("orders")],
        [t("customer_totals")],
        {
            ("orders.amount", "customer_totals.total", "TRANSFORMATION"),
            ("orders.customer_id", "customer_totals.customer_id", "IDENTITY"),
        },
        id="window-and-column-list",
    ),
    pytest.param(
        "CREATE TABLE shop.labels AS SELECT order_id, CASE WHEN region = 'EU' THEN amount ELSE 0 END AS eu_amount "
        "FROM orders",
        "CTAS",
        [t("orders")],
        [t("labels")],
        {
            ("orders.order_id", "labels.order_id", "IDENTITY"),
            ("orders.amount", "labels.eu_amount", "TRANSFORMATION"),  # region only decides: not a source
        },
        id="case",
    ),
    pytest.param(
        "CREATE TABLE shop.customers_copy WITH (format = 'PARQUET') AS SELECT * FROM customers",
        "CTAS",
        [t("customers")],
        [t("customers_copy")],
        {(f"customers.{c}", f"customers_copy.{c}", "IDENTITY") for c in SHOP["customers"]},
        id="star-expanded",
    ),
    pytest.param(
        "SELECT c.country, COUNT(*) FROM orders o JOIN customers c USING (customer_id) GROUP BY c.country",
        "SELECT",
        [t("customers"), t("orders")],
        [],
        set(),
        id="select-reads-only",
    ),
]


@pytest.mark.parametrize(("sql", "kind", "reads", "writes", "expected"), CORPUS)
def test_corpus_exact_edges(analyzer, sql, kind, reads, writes, expected):
    result = analyzer.analyze(sql, database="shop")
    assert (result.kind, result.status, result.detail) == (kind, Status.RESOLVED, "")
    assert list(result.reads) == reads
    assert list(result.writes) == writes
    assert edges(result) == expected


def test_columns_read_cover_filters_joins_and_star(analyzer):
    result = analyzer.analyze(
        "SELECT o.amount FROM orders o JOIN customers c ON o.customer_id = c.customer_id WHERE c.country = 'DE'",
        database="shop",
    )
    assert result.columns_read == (
        (C, "shop", "customers", "country"),
        (C, "shop", "customers", "customer_id"),
        (C, "shop", "orders", "amount"),
        (C, "shop", "orders", "customer_id"),
    )
    star = analyzer.analyze("SELECT * FROM shop.order_items", database="other")
    assert [c[3] for c in star.columns_read] == sorted(SHOP["order_items"])


def test_a_view_query_maps_to_the_view_columns_by_position(analyzer):
    schema = analyzer.schema
    schema.add("AwsDataCatalog", "shop", "big_orders", "id", "bigint")
    schema.add("AwsDataCatalog", "shop", "big_orders", "value", "double")
    result = analyzer.analyze(
        "SELECT order_id, amount FROM orders WHERE amount > 100", database="shop", view=t("big_orders")
    )
    assert (result.kind, result.status) == ("VIEW", Status.RESOLVED)
    assert edges(result) == {
        ("orders.order_id", "big_orders.id", "IDENTITY"),
        ("orders.amount", "big_orders.value", "IDENTITY"),
    }


def test_hive_dialect_backquotes(analyzer):
    result = analyzer.analyze("SELECT `name` FROM `shop`.`customers`", dialect="hive")
    assert (result.status, result.reads) == (Status.RESOLVED, (t("customers"),))


@pytest.mark.parametrize(
    ("sql", "status", "detail"),
    [
        pytest.param(
            "SELECT FROM WHERE 'secret'",
            Status.UNPARSED,
            "sqlglot could not parse it (line 1, column",
            id="unparseable",
        ),
        pytest.param(
            "SELECT a FROM t; SELECT b FROM u",
            Status.UNPARSED,
            "2 statements (Athena runs one)",
            id="two-statements",
        ),
        pytest.param(
            "UPDATE orders SET amount = 0 WHERE email = 'alice@example.com'",
            Status.UNPARSED,
            "Update statements are not analysed",
            id="update",
        ),
        pytest.param(
            "SELECT email FROM shop.leads WHERE email = 'alice@example.com'",
            Status.UNRESOLVED,
            "not in the catalog: awsdatacatalog.shop.leads",
            id="table-not-in-catalog",
        ),
        pytest.param(
            "SELECT nickname FROM customers WHERE name = 'Alice'",
            Status.PARTIAL,
            "1 column reference(s) not in the catalog",
            id="column-not-in-catalog",
        ),
        # a double-quoted name where a value belongs may be data: counted, never named
        pytest.param(
            'SELECT name FROM customers WHERE email = "alice@example.com"',
            Status.PARTIAL,
            "1 column reference(s)",
            id="double-quoted-value",
        ),
        pytest.param(
            "MSCK REPAIR TABLE orders",
            Status.NOT_LINEAGE,
            "MSCK moves no data between tables",
            id="msck-repair",
        ),
        pytest.param(
            "ALTER TABLE orders ADD PARTITION (region = 'EU')",
            Status.NOT_LINEAGE,
            "Alter moves no data between tables",
            id="alter-add-partition",
        ),
        pytest.param(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'x'",
            Status.NOT_LINEAGE,
            "reads only information_schema",
            id="information-schema",
        ),
    ],
)
def test_what_is_not_resolved_is_said_never_guessed(analyzer, sql, status, detail):
    result = analyzer.analyze(sql, database="shop")
    assert result.status == status
    assert result.detail.startswith(detail)
    if status != Status.PARTIAL:
        assert result.edges == ()
        assert result.columns_read == ()
    # The detail names tables and columns, never a piece of the text (literals).
    assert "secret" not in result.detail
    assert "alice" not in result.detail
    assert "Alice" not in result.detail


def test_partial_keeps_the_resolved_column_edges_only(analyzer):
    result = analyzer.analyze("CREATE TABLE shop.x AS SELECT name, nickname FROM customers", database="shop")
    assert result.status == Status.PARTIAL
    assert edges(result) == {("customers.name", "x.name", "IDENTITY")}


def test_unknown_dialect_is_a_configuration_error(analyzer):
    with pytest.raises(ValueError):
        analyzer.analyze("SELECT 1", dialect="no-such-dialect")
