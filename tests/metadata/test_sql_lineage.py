"""SQL lineage (tasks/metadata/lineage/sql.py): a corpus of view and query SQL with known lineage,
asserting exact table- and column-level edges, and the statuses of what cannot be resolved."""

from __future__ import annotations

import pickle

import pytest

from tasks.metadata.lineage.sql import Indirect, IndirectEdge, LineageSchema, SqlLineage, Status

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
            "EXECUTE fetch_orders USING 'secret'",
            Status.UNPARSED,
            "sqlglot keeps EXECUTE as raw text (Command)",
            id="raw-command",
        ),
        pytest.param(
            "UPDATE orders SET amount = 0 WHERE email = 'alice@example.com'",
            Status.PARTIAL,
            "1 column reference(s) not in the catalog",
            id="update-column-not-in-catalog",
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


# --- issue 26 section 7: SQL teams write -------------------------------------------------------------


def col(table: str, column: str, database: str = "shop") -> tuple[str, str, str, str]:
    return (C, database, table, column)


def test_a_body_in_parentheses_gives_its_column_edges(analyzer):
    view = analyzer.analyze(
        "CREATE VIEW shop.contacts AS (SELECT name, email FROM customers)", database="shop"
    )
    assert (view.kind, view.status) == ("CREATE_VIEW", Status.RESOLVED)
    assert edges(view) == {
        ("customers.name", "contacts.name", "IDENTITY"),
        ("customers.email", "contacts.email", "IDENTITY"),
    }
    ctas = analyzer.analyze(
        "CREATE TABLE shop.big AS (WITH o AS (SELECT customer_id, amount FROM orders WHERE amount > 10) "
        "SELECT customer_id, MAX(amount) AS top FROM o GROUP BY customer_id)",
        dialect="postgres",
        database="shop",
    )
    assert (ctas.kind, ctas.status) == ("CTAS", Status.RESOLVED)
    assert edges(ctas) == {
        ("orders.customer_id", "big.customer_id", "IDENTITY"),
        ("orders.amount", "big.top", "AGGREGATION"),
    }


def test_an_insert_into_a_table_not_in_the_catalog_keeps_its_reads(analyzer):
    sql = (
        "INSERT INTO shop.order_facts SELECT o.order_id, c.country, i.sku FROM orders o "
        "JOIN customers c ON c.customer_id = o.customer_id JOIN order_items i ON i.order_id = o.order_id"
    )
    result = analyzer.analyze(sql, dialect="hive", database="shop")
    assert result.status == Status.PARTIAL
    assert result.detail == "target awsdatacatalog.shop.order_facts not in the catalog"
    assert result.reads == (t("customers"), t("order_items"), t("orders"))
    assert result.writes == (t("order_facts"),)
    assert result.edges == ()  # its columns are filled by position: unknown, never guessed by name
    assert col("order_items", "sku") in result.columns_read
    listed = analyzer.analyze(
        "INSERT INTO shop.order_facts (id, land) SELECT o.order_id, c.country FROM orders o "
        "JOIN customers c ON c.customer_id = o.customer_id",
        database="shop",
    )
    assert listed.status == Status.PARTIAL
    assert edges(listed) == {
        ("orders.order_id", "order_facts.id", "IDENTITY"),
        ("customers.country", "order_facts.land", "IDENTITY"),
    }


def test_what_sqlglot_cannot_qualify_keeps_its_tables(analyzer):
    # USING a column neither side has: sqlglot's OptimizeError
    result = analyzer.analyze(
        "CREATE TABLE shop.joined AS SELECT o.amount, c.name FROM orders o JOIN customers c USING (nothing_here)",
        database="shop",
    )
    assert result.status == Status.UNRESOLVED
    assert result.detail == "sqlglot could not qualify it (OptimizeError)"
    assert (result.reads, result.writes) == ((t("customers"), t("orders")), (t("joined"),))
    assert result.edges == ()
    missing = analyzer.analyze(
        "WITH recent AS (SELECT order_id FROM orders) INSERT INTO shop.daily_revenue "
        "SELECT r.order_id, g.value FROM recent r JOIN shop.gone g ON g.id = r.order_id",
        database="shop",
    )
    assert missing.status == Status.UNRESOLVED
    assert missing.reads == (t("gone"), t("orders"))  # the CTE is no table


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE VIEW shop.v AS SELECT order_id FROM orders; -- end of view",
        "/* made by hand */ CREATE VIEW shop.v AS SELECT order_id FROM orders;\n-- end\n;\n",
        "CREATE VIEW shop.v AS SELECT order_id FROM orders;;",
    ],
)
def test_a_trailing_semicolon_and_comment_are_no_statement(analyzer, sql):
    result = analyzer.analyze(sql, dialect="mysql", database="shop")
    assert (result.kind, result.status) == ("CREATE_VIEW", Status.RESOLVED)
    assert edges(result) == {("orders.order_id", "v.order_id", "IDENTITY")}


def test_a_lateral_derived_table_is_traced_and_a_table_function_is_said(analyzer):
    lateral = analyzer.analyze(
        "CREATE TABLE shop.last_item AS SELECT o.order_id, li.top_price FROM orders o "
        "CROSS JOIN LATERAL (SELECT MAX(i.price) AS top_price FROM order_items i WHERE i.order_id = o.order_id) li",
        dialect="postgres",
        database="shop",
    )
    assert lateral.status == Status.RESOLVED
    assert lateral.reads == (t("order_items"), t("orders"))
    assert edges(lateral) == {
        ("orders.order_id", "last_item.order_id", "IDENTITY"),
        ("order_items.price", "last_item.top_price", "AGGREGATION"),
    }
    unnest = analyzer.analyze(
        "CREATE TABLE shop.tags AS SELECT c.name, tag FROM customers c CROSS JOIN UNNEST(split(c.email, '@')) AS x(tag)",
        dialect="trino",
        database="shop",
    )
    assert unnest.status == Status.PARTIAL
    assert unnest.detail == "1 target column(s) not traced to the catalog"
    assert edges(unnest) == {("customers.name", "tags.name", "IDENTITY")}


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        (
            "mysql",
            "CREATE TABLE shop.c2 AS SELECT Customer_ID, MAX(`Amount`) AS TOP FROM Orders GROUP BY Customer_ID",
        ),
        (
            "snowflake",
            "CREATE TABLE shop.c2 AS SELECT CUSTOMER_ID, MAX(AMOUNT) AS TOP FROM SHOP.ORDERS GROUP BY 1",
        ),
        (
            "postgres",
            'CREATE TABLE shop.c2 AS SELECT "customer_id", MAX(o."AMOUNT") AS "Top" FROM orders o GROUP BY 1',
        ),
        (
            "hive",
            "CREATE TABLE shop.c2 AS SELECT `CUSTOMER_ID`, max(AMOUNT) top FROM `shop`.`ORDERS` GROUP BY `CUSTOMER_ID`",
        ),
    ],
)
def test_identifiers_match_the_lower_case_catalog_in_every_dialect(analyzer, dialect, sql):
    result = analyzer.analyze(sql, dialect=dialect, database="shop")
    assert (result.status, result.reads) == (Status.RESOLVED, (t("orders"),))
    assert edges(result) == {
        ("orders.customer_id", "c2.customer_id", "IDENTITY"),
        ("orders.amount", "c2.top", "AGGREGATION"),
    }


def test_an_insert_maps_by_position_never_by_name(analyzer):
    result = analyzer.analyze(
        "INSERT INTO customer_totals SELECT c.customer_id, o.customer_id FROM customers c "
        "JOIN orders o ON o.customer_id = c.customer_id",
        database="shop",
    )
    assert result.status == Status.RESOLVED
    assert edges(result) == {
        ("customers.customer_id", "customer_totals.customer_id", "IDENTITY"),
        ("orders.customer_id", "customer_totals.total", "IDENTITY"),
    }
    # Hive: a static partition is set by the PARTITION clause, not by the query
    schema = LineageSchema()
    for column in ("sku", "units", "day"):
        schema.add(C, "shop", "sku_days", column, "string")
    for column in SHOP["order_items"]:
        schema.add(C, "shop", "order_items", column, "string")
    hive = SqlLineage(schema).analyze(
        "INSERT OVERWRITE TABLE sku_days PARTITION (day = '2026-01-01') SELECT sku, SUM(quantity) FROM order_items GROUP BY sku",
        dialect="hive",
        database="shop",
    )
    assert hive.status == Status.RESOLVED
    assert edges(hive) == {
        ("order_items.sku", "sku_days.sku", "IDENTITY"),
        ("order_items.quantity", "sku_days.units", "AGGREGATION"),
    }


@pytest.mark.parametrize("dialect", ["trino", "postgres", "mysql"])
def test_a_cte_before_insert_is_no_table(analyzer, dialect):
    result = analyzer.analyze(
        "WITH per_day AS (SELECT ordered_at AS d, amount FROM orders) "
        "INSERT INTO daily_revenue SELECT d, SUM(amount) FROM per_day GROUP BY d",
        dialect=dialect,
        database="shop",
    )
    assert (result.status, result.reads) == (Status.RESOLVED, (t("orders"),))
    assert edges(result) == {
        ("orders.ordered_at", "daily_revenue.day", "IDENTITY"),
        ("orders.amount", "daily_revenue.revenue", "AGGREGATION"),
    }


def test_indirect_edges_carry_openlineage_subtypes(analyzer):
    result = analyzer.analyze(
        "CREATE TABLE shop.ranked AS SELECT c.name, "
        "RANK() OVER (PARTITION BY c.country ORDER BY o.amount) AS r, "
        "CASE WHEN o.discount > 0 THEN o.amount END AS discounted "
        "FROM orders o JOIN customers c ON c.customer_id = o.customer_id "
        "WHERE o.region IN (SELECT country FROM customers) GROUP BY 1, 2, 3 ORDER BY c.email",
        database="shop",
    )
    target = (C, "shop", "ranked")
    assert set(result.indirect) == {
        IndirectEdge(col("customers", "customer_id"), Indirect.JOIN),
        IndirectEdge(col("orders", "customer_id"), Indirect.JOIN),
        IndirectEdge(col("orders", "region"), Indirect.FILTER),
        IndirectEdge(col("customers", "country"), Indirect.FILTER),
        IndirectEdge(col("customers", "name"), Indirect.GROUP_BY),
        IndirectEdge(col("customers", "country"), Indirect.GROUP_BY),
        IndirectEdge(col("orders", "amount"), Indirect.GROUP_BY),
        IndirectEdge(col("orders", "discount"), Indirect.GROUP_BY),
        IndirectEdge(col("customers", "email"), Indirect.SORT),
        IndirectEdge(col("customers", "country"), Indirect.WINDOW, (*target, "r")),
        IndirectEdge(col("orders", "amount"), Indirect.WINDOW, (*target, "r")),
        IndirectEdge(col("orders", "discount"), Indirect.CONDITIONAL, (*target, "discounted")),
    }
    assert list(result.indirect) == sorted(
        result.indirect, key=lambda e: (e.target or (), e.subtype, e.source)
    )
    assert analyzer.analyze("SELECT name FROM customers WHERE country = 'DE'", database="shop").indirect == ()


def test_lineage_and_analyzer_are_picklable(analyzer):
    sql = "INSERT INTO customer_totals SELECT customer_id, SUM(amount) FROM orders GROUP BY customer_id"
    result = analyzer.analyze(sql, database="shop")
    assert pickle.loads(pickle.dumps(result)) == result
    assert pickle.loads(pickle.dumps(analyzer)).analyze(sql, database="shop") == result


# A small evaluation set of shapes teams write, in five dialects: every expected column edge (and no
# other) where the catalog knows every table, every table read. Edges as "table.column>target.column".
EVALUATION = [
    (
        "",
        "CREATE TABLE shop.e1 AS SELECT order_id, amount FROM orders UNION ALL SELECT order_id, amount FROM archive.orders_2020",
        {"orders", "orders_2020"},
        {
            "orders.order_id>e1.order_id",
            "orders_2020.order_id>e1.order_id",
            "orders.amount>e1.amount",
            "orders_2020.amount>e1.amount",
        },
    ),
    (
        "",
        "CREATE TABLE shop.e2 AS SELECT s.cid, s.n FROM (SELECT customer_id AS cid, COUNT(*) AS n FROM (SELECT customer_id FROM orders WHERE amount > 0) a GROUP BY customer_id) s",
        {"orders"},
        {"orders.customer_id>e2.cid"},
    ),
    (
        "trino",
        "CREATE TABLE shop.e3 WITH (format = 'ORC') AS WITH a AS (SELECT * FROM customers), b AS (SELECT a.*, o.amount FROM a JOIN orders o ON o.customer_id = a.customer_id) SELECT * FROM b",
        {"customers", "orders"},
        {f"customers.{c}>e3.{c}" for c in SHOP["customers"]} | {"orders.amount>e3.amount"},
    ),
    (
        "trino",
        'INSERT INTO "shop"."customer_totals" SELECT "customer_id", CASE WHEN SUM(amount) > 100 THEN SUM(amount) ELSE 0 END FROM orders GROUP BY 1',
        {"orders"},
        {"orders.customer_id>customer_totals.customer_id", "orders.amount>customer_totals.total"},
    ),
    (
        "hive",
        "INSERT OVERWRITE TABLE shop.daily_revenue SELECT to_date(ordered_at), SUM(amount * (1 - discount)) FROM orders GROUP BY to_date(ordered_at)",
        {"orders"},
        {
            "orders.ordered_at>daily_revenue.day",
            "orders.amount>daily_revenue.revenue",
            "orders.discount>daily_revenue.revenue",
        },
    ),
    (
        "hive",
        "FROM shop.order_items i INSERT INTO TABLE shop.daily_revenue SELECT i.sku, i.price * i.quantity",
        {"order_items"},
        {
            "order_items.sku>daily_revenue.day",
            "order_items.price>daily_revenue.revenue",
            "order_items.quantity>daily_revenue.revenue",
        },
    ),
    (
        "hive",
        "CREATE TABLE shop.e7 STORED AS PARQUET AS SELECT `c`.`name`, sum(o.amount) OVER (PARTITION BY c.country) AS country_total FROM customers c LEFT JOIN orders o ON o.customer_id = c.customer_id",
        {"customers", "orders"},
        {"customers.name>e7.name", "orders.amount>e7.country_total"},
    ),
    (
        "postgres",
        "CREATE MATERIALIZED VIEW shop.e8 AS SELECT c.name, (SELECT MAX(o.amount) FROM orders o WHERE o.customer_id = c.customer_id) AS biggest FROM customers c",
        {"customers", "orders"},
        {"customers.name>e8.name", "orders.amount>e8.biggest"},
    ),
    (
        "postgres",
        "SELECT o.order_id, o.amount::numeric(10, 2) AS amount INTO shop.e9 FROM orders o WHERE o.region = 'EU'",
        {"orders"},
        {"orders.order_id>e9.order_id", "orders.amount>e9.amount"},
    ),
    (
        "postgres",
        'CREATE VIEW shop."E10" ("Id", "Who") AS SELECT o.order_id, c.email FROM orders o, customers c WHERE c.customer_id = o.customer_id',
        {"customers", "orders"},
        {"orders.order_id>e10.id", "customers.email>e10.who"},
    ),
    (
        "mysql",
        "CREATE TABLE shop.e11 SELECT i.sku, COALESCE(SUM(i.quantity), 0) AS units FROM order_items i JOIN orders o USING (order_id) GROUP BY i.sku",
        {"order_items", "orders"},
        {"order_items.sku>e11.sku", "order_items.quantity>e11.units"},
    ),
    (
        "mysql",
        "INSERT INTO customer_totals (total, customer_id) SELECT IF(o.amount > 0, o.amount, NULL), `c`.`CUSTOMER_ID` FROM customers c JOIN orders o ON o.customer_id = c.customer_id",
        {"customers", "orders"},
        {"orders.amount>customer_totals.total", "customers.customer_id>customer_totals.customer_id"},
    ),
    (
        "mysql",
        "CREATE VIEW shop.e13 AS (SELECT email FROM customers) UNION (SELECT name FROM customers WHERE country = 'FR');",
        {"customers"},
        {"customers.email>e13.email", "customers.name>e13.email"},
    ),
]


def test_evaluation_set_precision_and_recall(analyzer):
    got_edges = expected_edges = found_edges = got_tables = expected_tables = found_tables = 0
    for dialect, sql, reads, expected in EVALUATION:
        result = analyzer.analyze(sql, dialect=dialect, database="shop")
        assert result.status == Status.RESOLVED, (sql, result.detail)
        edges_out = {f"{e.source[2]}.{e.source[3]}>{e.target[2]}.{e.target[3]}" for e in result.edges}
        tables = {r[2] for r in result.reads}
        assert edges_out == expected, sql
        assert tables == reads, sql
        got_edges += len(edges_out)
        expected_edges += len(expected)
        found_edges += len(edges_out & expected)
        got_tables += len(tables)
        expected_tables += len(reads)
        found_tables += len(tables & reads)
    assert (found_edges / got_edges, found_edges / expected_edges) == (1.0, 1.0)
    assert found_tables / expected_tables == 1.0


# --- UPDATE, DELETE, MERGE: the written table, every table read, the column edges that are certain ---


def direct(result) -> set[str]:
    return {
        f"{e.source[2]}.{e.source[3]}>{e.target[2]}.{e.target[3]}:{e.transformation.value}"
        for e in result.edges
    }


def indirect(result) -> set[str]:
    return {
        f"{e.source[2]}.{e.source[3]}:{e.subtype.value}"
        + (f">{e.target[2]}.{e.target[3]}" if e.target else "")
        for e in result.indirect
    }


def test_update_with_subqueries_writes_its_target_and_reads_the_rest(analyzer):
    result = analyzer.analyze(
        "UPDATE customer_totals SET total = (SELECT SUM(o.amount) FROM orders o "
        "WHERE o.customer_id = customer_totals.customer_id) "
        "WHERE customer_id IN (SELECT customer_id FROM customers WHERE country = 'NL')",
        database="shop",
    )
    assert (result.kind, result.status, result.detail) == ("UPDATE", Status.RESOLVED, "")
    assert (result.reads, result.writes) == ((t("customers"), t("orders")), (t("customer_totals"),))
    assert direct(result) == {"orders.amount>customer_totals.total:AGGREGATION"}
    assert indirect(result) == {
        "orders.customer_id:CONDITIONAL>customer_totals.total",  # the correlated subquery's filter
        "customers.customer_id:FILTER",
        "customers.country:FILTER",
    }


def test_update_of_its_own_columns_has_no_edge_and_a_missing_column_is_said(analyzer):
    own = analyzer.analyze(
        "UPDATE orders SET amount = amount * (1 - discount) WHERE region = 'EU'", database="shop"
    )
    assert (own.status, own.reads, own.writes) == (Status.RESOLVED, (), (t("orders"),))
    assert (own.edges, own.indirect) == ((), ())  # the row's own values: no lineage between tables
    assert col("orders", "region") in own.columns_read


def test_postgres_update_from(analyzer):
    result = analyzer.analyze(
        "UPDATE shop.orders AS o SET discount = c.total / 100.0, region = 'X' FROM customer_totals c "
        "JOIN customers cu ON cu.customer_id = c.customer_id WHERE c.customer_id = o.customer_id",
        dialect="postgres",
        database="shop",
    )
    assert (result.kind, result.status) == ("UPDATE", Status.RESOLVED)
    assert (result.reads, result.writes) == ((t("customer_totals"), t("customers")), (t("orders"),))
    assert direct(result) == {"customer_totals.total>orders.discount:TRANSFORMATION"}
    assert indirect(result) == {
        "customer_totals.customer_id:JOIN",
        "customers.customer_id:JOIN",
        "customer_totals.customer_id:FILTER",
    }


def test_mysql_multi_table_update(analyzer):
    result = analyzer.analyze(
        "UPDATE orders o JOIN customers c ON c.customer_id = o.customer_id SET o.region = c.country "
        "WHERE c.email LIKE '%@example.com'",
        dialect="mysql",
        database="shop",
    )
    assert (result.kind, result.status) == ("UPDATE", Status.RESOLVED)
    assert (result.reads, result.writes) == ((t("customers"),), (t("orders"),))
    assert direct(result) == {"customers.country>orders.region:IDENTITY"}
    assert indirect(result) == {"customers.customer_id:JOIN", "customers.email:FILTER"}
    both = analyzer.analyze(
        "UPDATE orders o JOIN customers c ON c.customer_id = o.customer_id SET o.region = c.country, c.email = ''",
        dialect="mysql",
        database="shop",
    )
    assert both.writes == (t("customers"), t("orders"))
    assert both.status == Status.PARTIAL  # each table is written and read: never a false resolved
    assert both.detail == "an UPDATE of 2 tables: edges between them not traced"


def test_an_update_set_tuple_keeps_its_reads(analyzer):
    result = analyzer.analyze(
        "UPDATE customer_totals SET (customer_id, total) = (SELECT customer_id, amount FROM orders LIMIT 1)",
        dialect="postgres",
        database="shop",
    )
    assert (result.status, result.detail) == (Status.PARTIAL, "a SET item not traced")
    assert (result.reads, result.writes, result.edges) == ((t("orders"),), (t("customer_totals"),), ())


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        (
            "postgres",
            "DELETE FROM orders o USING customers c WHERE c.customer_id = o.customer_id AND c.country = 'X'",
        ),
        (
            "mysql",
            "DELETE o FROM orders o JOIN customers c ON c.customer_id = o.customer_id WHERE c.country = 'X'",
        ),
        (
            "",
            "DELETE FROM orders WHERE customer_id IN (SELECT customer_id FROM customers WHERE country = 'X')",
        ),
    ],
)
def test_delete_writes_its_target_with_filters_and_no_column_edge(analyzer, dialect, sql):
    result = analyzer.analyze(sql, dialect=dialect, database="shop")
    assert (result.kind, result.status, result.detail) == ("DELETE", Status.RESOLVED, "")
    assert (result.reads, result.writes, result.edges) == ((t("customers"),), (t("orders"),), ())
    assert {e.source[3] for e in result.indirect} == {"customer_id", "country"}
    assert all(e.source[2] == "customers" and e.target is None for e in result.indirect)


def test_delete_of_a_table_alone_and_mysql_delete_of_two_tables(analyzer):
    alone = analyzer.analyze("DELETE FROM shop.orders WHERE region = 'EU'", dialect="athena")
    assert (alone.status, alone.reads, alone.writes, alone.indirect) == (
        Status.RESOLVED,
        (),
        (t("orders"),),
        (),
    )
    two = analyzer.analyze(
        "DELETE o, c FROM orders o JOIN customers c ON c.customer_id = o.customer_id",
        dialect="mysql",
        database="shop",
    )
    assert (two.status, two.reads, two.writes) == (Status.RESOLVED, (), (t("customers"), t("orders")))


def test_trino_merge_from_a_derived_table(analyzer):
    result = analyzer.analyze(
        "MERGE INTO customer_totals AS t USING (SELECT customer_id, SUM(amount) AS spent FROM orders "
        "WHERE region = 'EU' GROUP BY customer_id) AS s ON t.customer_id = s.customer_id "
        "WHEN MATCHED AND s.spent = 0 THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET total = t.total + s.spent "
        "WHEN NOT MATCHED THEN INSERT (customer_id, total) VALUES (s.customer_id, spent)",
        dialect="trino",
        database="shop",
    )
    assert (result.kind, result.status, result.detail) == ("MERGE", Status.RESOLVED, "")
    assert (result.reads, result.writes) == ((t("orders"),), (t("customer_totals"),))
    assert direct(result) == {
        "orders.amount>customer_totals.total:AGGREGATION",
        "orders.customer_id>customer_totals.customer_id:IDENTITY",
    }
    assert indirect(result) == {
        "orders.customer_id:JOIN",
        "orders.customer_id:GROUP_BY",
        "orders.region:FILTER",
        "orders.amount:FILTER",  # which matched rows are deleted
    }


def test_hive_merge_inserts_by_position_and_conditions_decide_columns(analyzer):
    result = analyzer.analyze(
        "MERGE INTO shop.customer_totals AS t USING shop.orders AS o ON t.customer_id = o.customer_id "
        "WHEN MATCHED AND o.discount > 0 THEN UPDATE SET total = o.amount * (1 - o.discount) "
        "WHEN NOT MATCHED THEN INSERT VALUES (customer_id, amount)",
        dialect="hive",
    )
    assert (result.kind, result.status) == ("MERGE", Status.RESOLVED)
    assert (result.reads, result.writes) == ((t("orders"),), (t("customer_totals"),))
    assert direct(result) == {
        "orders.amount>customer_totals.total:TRANSFORMATION",
        "orders.discount>customer_totals.total:TRANSFORMATION",
        "orders.customer_id>customer_totals.customer_id:IDENTITY",  # unqualified: the source's
        "orders.amount>customer_totals.total:IDENTITY",  # INSERT without columns: by position
    }
    assert indirect(result) == {
        "orders.customer_id:JOIN",
        "orders.discount:CONDITIONAL>customer_totals.total",
    }


def test_merge_with_what_cannot_be_mapped_is_partial_with_its_tables(analyzer):
    star = analyzer.analyze(
        "MERGE INTO shop.customer_totals t USING shop.orders s ON t.customer_id = s.customer_id "
        "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
        dialect="spark",
    )
    assert star.status == Status.PARTIAL
    assert (star.reads, star.writes, star.edges) == ((t("orders"),), (t("customer_totals"),), ())
    missing = analyzer.analyze(
        "MERGE INTO shop.ledger l USING orders o ON l.id = o.order_id WHEN MATCHED THEN UPDATE SET amount = o.amount",
        database="shop",
    )
    assert (missing.status, missing.detail) == (
        Status.PARTIAL,
        "target awsdatacatalog.shop.ledger not in the catalog",
    )
    assert (missing.reads, missing.writes, missing.edges) == ((t("orders"),), (t("ledger"),), ())
    gone = analyzer.analyze(
        "MERGE INTO customer_totals t USING shop.gone g ON t.customer_id = g.id "
        "WHEN MATCHED THEN UPDATE SET total = g.v",
        database="shop",
    )
    assert (gone.status, gone.reads, gone.writes) == (
        Status.UNRESOLVED,
        (t("gone"),),
        (t("customer_totals"),),
    )


def test_a_cte_before_update_is_no_table(analyzer):
    result = analyzer.analyze(
        "WITH spent AS (SELECT customer_id, SUM(amount) AS s FROM orders GROUP BY customer_id) "
        "UPDATE customer_totals t SET total = spent.s FROM spent WHERE spent.customer_id = t.customer_id",
        dialect="postgres",
        database="shop",
    )
    assert (result.status, result.reads) == (Status.RESOLVED, (t("orders"),))
    assert direct(result) == {"orders.amount>customer_totals.total:AGGREGATION"}


def test_insert_values_replace_and_upserts(analyzer):
    values = analyzer.analyze(
        "INSERT INTO customer_totals (customer_id, total) VALUES (1, 2.5)", database="shop"
    )
    assert (values.kind, values.status, values.reads, values.writes) == (
        "INSERT",
        Status.RESOLVED,
        (),
        (t("customer_totals"),),
    )
    replace = analyzer.analyze(
        "REPLACE INTO customer_totals SELECT customer_id, SUM(amount) FROM orders GROUP BY customer_id",
        dialect="mysql",
        database="shop",
    )
    assert (replace.kind, replace.status, replace.reads) == ("INSERT", Status.RESOLVED, (t("orders"),))
    assert direct(replace) == {
        "orders.customer_id>customer_totals.customer_id:IDENTITY",
        "orders.amount>customer_totals.total:AGGREGATION",
    }
    upsert = analyzer.analyze(
        "INSERT INTO customer_totals (customer_id) SELECT customer_id FROM orders "
        "ON CONFLICT (customer_id) DO UPDATE SET total = customer_totals.total + EXCLUDED.customer_id",
        dialect="postgres",
        database="shop",
    )
    assert upsert.status == Status.RESOLVED
    assert direct(upsert) == {
        "orders.customer_id>customer_totals.customer_id:IDENTITY",
        "orders.customer_id>customer_totals.total:TRANSFORMATION",
    }
    duplicate = analyzer.analyze(
        "INSERT INTO customer_totals (customer_id, total) SELECT customer_id, amount FROM orders "
        "ON DUPLICATE KEY UPDATE total = VALUES(total), customer_id = (SELECT MAX(customer_id) FROM customers)",
        dialect="mysql",
        database="shop",
    )
    assert (duplicate.status, duplicate.detail) == (
        Status.PARTIAL,
        "an ON CONFLICT/DUPLICATE KEY UPDATE item not traced",
    )


@pytest.mark.parametrize(
    "sql",
    [
        "TRUNCATE TABLE orders",
        "DROP TABLE IF EXISTS orders",
        "ALTER TABLE orders RENAME TO orders_old",
        "CREATE TABLE shop.orders_empty LIKE orders",
    ],
)
def test_statements_that_move_no_data_are_not_lineage(analyzer, sql):
    result = analyzer.analyze(sql, dialect="hive", database="shop")
    assert (result.status, result.reads, result.writes, result.edges) == (Status.NOT_LINEAGE, (), (), ())
