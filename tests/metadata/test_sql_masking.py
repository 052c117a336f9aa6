"""Masking of SQL literals (tasks/metadata/masking.py): no literal survives, comments go, structure stays.

The literal values of each input are found by a small regex scanner of our own, independent of
sqlglot: quoted strings (``''`` unescaped) and numbers outside identifiers, and everything inside
comments. None of them may appear in the masked output.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import pytest

from tasks.metadata import masking
from tasks.metadata.masking import REDACTED, mask_sql

# One lexical item at a time, so that quotes inside identifiers or comments do not open strings.
_SCAN = re.compile(
    r"""
      (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*.*?\*/)
    | (?P<dq_ident>"(?:[^"]|"")*")
    | (?P<bq_ident>`[^`]*`)
    | (?P<string>'(?:[^']|'')*')
    | (?P<word>[^\W\d]\w*)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class Lexed:
    strings: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


def lex(sql: str) -> Lexed:
    """Strings (unescaped), numbers and comment bodies of ``sql``; identifiers and words are skipped."""
    found = Lexed()
    for match in _SCAN.finditer(sql):
        kind, text = match.lastgroup, match.group()
        if kind == "string":
            found.strings.append(text[1:-1].replace("''", "'"))
        elif kind == "number":
            found.numbers.append(text)
        elif kind in ("line_comment", "block_comment"):
            body = text[2:] if kind == "line_comment" else text[2:-2]
            found.comments.append(body.strip())
            inner = lex(body)
            found.strings += inner.strings
            found.numbers += inner.numbers
    return found


def literal_values(sql: str) -> list[str]:
    """Values the output must not contain: strings of 3+ characters or 2+ digits, numbers of 2+ digits,
    comment bodies (shorter values could appear in the output by chance, e.g. 'a' in a name)."""
    found = lex(sql)
    numbers = [n for n in found.numbers if sum(c.isdigit() for c in n) >= 2]
    strings = [s for s in found.strings if len(s) >= 3 or sum(c.isdigit() for c in s) >= 2]
    return strings + numbers + [c for c in found.comments if c]


def assert_masked(sql: str, out: str, keep: tuple[str, ...]) -> None:
    assert out != REDACTED, f"unexpectedly redacted: {sql!r}"
    lexed_out, input_numbers = lex(out), lex(sql).numbers
    for value in literal_values(sql):
        if value in input_numbers:
            assert value not in lexed_out.numbers, f"number {value!r} survived in {out!r}"
        else:
            assert value not in out, f"{value!r} survived in {out!r}"
    assert set(lexed_out.strings) <= {""}, f"a string literal survived in {out!r}"
    assert lexed_out.numbers == [], f"a number survived in {out!r}"
    assert lexed_out.comments == [], out
    assert "--" not in out, out
    assert "/*" not in out, out
    for name in keep:
        assert name in out, f"{name!r} lost from {out!r}"


def test_the_scanner_skips_identifiers_and_reads_comments() -> None:
    found = lex("""SELECT "it's 42", `b 77`, t2024, 'O''Brien', -12.5e3 -- note '31'\n/* 9 */""")
    assert found.strings == ["O'Brien", "31"]
    assert found.numbers == ["12.5e3", "9"]
    assert found.comments == ["note '31'", "9"]


@dataclass(frozen=True)
class Case:
    id: str
    sql: str
    keep: tuple[str, ...] = ()  # names that must still be in the output


PARSEABLE = [
    Case(
        "where-string-number",
        "SELECT id, name FROM sales.orders WHERE status = 'shipped' AND amount > 250",
        ("sales.orders", "status", "amount"),
    ),
    Case(
        "where-date-timestamp",
        "SELECT * FROM orders WHERE order_date >= DATE '2024-03-15' AND created_at < TIMESTAMP '2024-03-16 08:30:00.123'",
        ("orders", "order_date", "created_at"),
    ),
    Case(
        "interval", "SELECT * FROM events WHERE ts > current_timestamp - INTERVAL '45' DAY", ("events", "ts")
    ),
    Case("time-literal", "SELECT * FROM shifts WHERE start_time = TIME '09:45:00'", ("shifts", "start_time")),
    Case(
        "in-list",
        "SELECT * FROM customers WHERE country IN ('France', 'Germany', 'Peru') AND tier NOT IN (11, 22, 33)",
        ("customers", "country", "tier"),
    ),
    Case(
        "like-escape",
        "SELECT email FROM users WHERE email LIKE '%@acme-corp.example' ESCAPE '!'",
        ("users", "email"),
    ),
    Case(
        "case",
        "SELECT CASE WHEN score >= 90 THEN 'excellent' WHEN score >= 50 THEN 'passable' ELSE 'failing' END AS grade FROM exams",
        ("exams", "score", "grade"),
    ),
    Case(
        "join",
        "SELECT o.id, c.name FROM orders o JOIN customers c ON o.customer_id = c.id AND c.region = 'EMEA-north' LEFT JOIN refunds r ON r.order_id = o.id WHERE o.total BETWEEN 100 AND 5000",
        ("orders", "customers", "refunds"),
    ),
    Case(
        "cte",
        "WITH recent AS (SELECT * FROM orders WHERE order_date > DATE '2023-12-31'), big AS (SELECT * FROM recent WHERE total > 9999) SELECT count(*) FROM big",
        ("recent", "big", "orders"),
    ),
    Case(
        "window",
        "SELECT user_id, sum(amount) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 29 PRECEDING AND CURRENT ROW) AS rolling FROM payments WHERE currency = 'EUR'",
        ("payments", "rolling"),
    ),
    Case(
        "insert-values",
        "INSERT INTO audit.logins (user_name, ip, attempts) VALUES ('alice', '10.1.2.3', 17), ('bob', '192.168.0.77', 42)",
        ("audit.logins", "user_name"),
    ),
    Case(
        "ctas-with",
        "CREATE TABLE analytics.daily WITH (format = 'PARQUET', external_location = 's3://acme-lake/daily/', partitioned_by = ARRAY['dt']) AS SELECT * FROM raw.events WHERE dt >= '2024-01-01'",
        ("analytics.daily", "raw.events", "format"),
    ),
    Case(
        "create-external-hive",
        "CREATE EXTERNAL TABLE `lake`.`clicks` (`user_id` string, `price` decimal(12,4)) PARTITIONED BY (`dt` string) STORED AS PARQUET LOCATION 's3://acme-lake/clicks/' TBLPROPERTIES ('parquet.compression' = 'SNAPPY')",
        ("clicks", "user_id", "PARQUET"),
    ),
    Case(
        "alter-partition",
        "ALTER TABLE lake.clicks ADD PARTITION (dt = '2024-05-06') LOCATION 's3://acme-lake/clicks/dt=2024-05-06/'",
        ("lake.clicks",),
    ),
    Case("describe", "DESCRIBE lake.clicks PARTITION (dt = '2024-05-06')", ("lake.clicks", "dt")),
    Case(
        "line-comment-secret",
        "SELECT * FROM users -- password is hunter2-secret\nWHERE id = 12345",
        ("users",),
    ),
    Case(
        "block-comment-secret",
        "/* token: tk_live_987654 'api-key' */ SELECT name FROM users WHERE id = 678",
        ("users", "name"),
    ),
    Case("hint-comment", "SELECT /*+ broadcast 'hint-secret' */ a FROM t_small", ("t_small",)),
    Case(
        "quoted-identifiers",
        'SELECT "it\'s a column", "we""ird" FROM "my table" WHERE "col 99" = \'value-x\'',
        ('"it\'s a column"', '"we""ird"', '"my table"'),
    ),
    Case(
        "unicode-string",
        "SELECT * FROM cities WHERE name = 'São Paulo ☕ 東京' OR alias = U&'caf\\00E9 au lait'",
        ("cities", "alias"),
    ),
    Case(
        "escaped-quote",
        "SELECT * FROM people WHERE last_name = 'O''Brien' AND nick = 'it''s me'",
        ("people", "last_name"),
    ),
    Case(
        "scientific-numbers",
        "SELECT 6.02E23 * mass, 1.5e-3 + drift, .75 * rate FROM physics",
        ("physics", "mass"),
    ),
    Case(
        "negative-numbers",
        "SELECT * FROM accounts WHERE balance < -4200 AND delta = -0.75 AND x - -31 > 0",
        ("accounts", "balance"),
    ),
    Case("hex-literal", "SELECT * FROM blobs WHERE header = X'DEADBEEF'", ("blobs", "header")),
    Case(
        "json-path",
        "SELECT json_extract_scalar(payload, '$.customer.ssn') FROM raw_events",
        ("raw_events", "payload"),
    ),
    Case(
        "function-args",
        "SELECT date_format(ts, '%Y-%m-%d'), regexp_like(code, '^ZX[0-9]{4}$'), approx_percentile(latency, 0.95) FROM requests",
        ("requests",),
    ),
    Case(
        "limit-offset-groupby",
        "SELECT region, count(*) FROM sales GROUP BY 1 ORDER BY 2 DESC OFFSET 20 LIMIT 50",
        ("sales", "region"),
    ),
    Case(
        "cast-types",
        "SELECT CAST(price AS DECIMAL(18, 2)), CAST('12345' AS INTEGER), TRY_CAST(code AS VARCHAR(64)) FROM items",
        ("items", "price", "code"),
    ),
    Case(
        "booleans-null-kept",
        "SELECT * FROM flags WHERE enabled = TRUE AND deleted = FALSE AND note IS NULL AND level = 77",
        ("flags", "TRUE", "FALSE", "NULL"),
    ),
    Case(
        "update",
        "UPDATE accounts SET email = 'new@acme.example', tries = 0 WHERE id = 8080",
        ("accounts", "email"),
    ),
    Case(
        "delete",
        "DELETE FROM sessions WHERE expires_at < TIMESTAMP '2023-01-01 00:00:00' AND token = 'sess-abc123'",
        ("sessions",),
    ),
    Case(
        "merge",
        "MERGE INTO dim_user t USING staging s ON t.id = s.id WHEN MATCHED THEN UPDATE SET plan = 'gold' WHEN NOT MATCHED THEN INSERT (id, plan) VALUES (s.id, 'trial')",
        ("dim_user", "staging"),
    ),
    Case(
        "view",
        "CREATE OR REPLACE VIEW v_vip AS SELECT * FROM customers WHERE lifetime_value > 100000",
        ("v_vip", "customers"),
    ),
    Case(
        "unnest-array-map",
        "SELECT * FROM UNNEST(ARRAY[101, 202], MAP(ARRAY['k1'], ARRAY['v-one'])) AS u(a, b)",
        ("UNNEST",),
    ),
    Case(
        "time-travel",
        "SELECT * FROM iceberg_orders FOR TIMESTAMP AS OF TIMESTAMP '2024-02-02 10:00:00 UTC'",
        ("iceberg_orders",),
    ),
    Case("at-time-zone", "SELECT ts AT TIME ZONE 'America/Sao_Paulo' FROM logs", ("logs",)),
    Case("placeholders-kept", "SELECT * FROM t_params WHERE a = ? AND b = 'bee-value'", ("t_params",)),
    Case(
        "multi-statement",
        "SELECT 'first-secret' FROM a_table; INSERT INTO b_table VALUES (31337); -- bye 'tail-secret'\n",
        ("a_table", "b_table"),
    ),
    Case("semicolon-in-string", "SELECT * FROM notes WHERE body = 'one;two;three' AND n = 64", ("notes",)),
]

MALFORMED = [
    "SELECT 'unbalanced FROM t WHERE x = 1",
    "SELECT (a + 1 FROM t WHERE b = 'secret-paren'",
    "SELECT * FROM t WHERE a = 'ok') AND b = 'secret-extra'",
    "this is not sql at all 'secret-garbage' 1234",
    "SELECT FROM WHERE 'secret-kw'",
    "SELECT * FROM t /* unterminated comment 'secret-comment'",
    "SELECT 1; SELECT 'secret-second' FROM (",
    "\x00\x01 binary 'secret-bin'",
]

# Statements sqlglot keeps as raw text (exp.Command) with the Athena dialect.
COMMANDS = [
    "SHOW TABLES IN lake LIKE 'secret-pattern*'",
    "SHOW PARTITIONS lake.clicks",
    "SHOW CREATE TABLE lake.clicks",
    "MSCK REPAIR TABLE lake.clicks",
    "UNLOAD (SELECT * FROM orders WHERE region = 'secret-region') TO 's3://acme-exports/secret/' WITH (format = 'PARQUET')",
    "EXPLAIN SELECT * FROM t WHERE a = 'secret-explain'",
    "EXECUTE stmt USING 'secret-arg', 42",
    "SELECT 1; MSCK REPAIR TABLE lake.clicks",  # one Command in a multi-statement text redacts it all
]

# Literals sqlglot reads as something else than a literal: masking the tree would keep them.
READ_AS_NAMES = [
    "SELECT * FROM 's3://secret-bucket/x'",  # a string read as a table name
    "SELECT amount AS 'secret-alias' FROM t",  # a string read as an alias
    "INSERT INTO t VALUES (1_234_567)",  # Trino: 1 AS _234_567
    "SELECT 12345abc FROM t",  # 12345 AS abc
    "ALTER TABLE t ADD PARTITION (p = 1_234)",  # Hive: a column named 1_234
]


def test_corpus_is_large_enough() -> None:
    assert len(PARSEABLE) + len(MALFORMED) + len(COMMANDS) >= 30
    assert len(PARSEABLE) >= 30


@pytest.mark.parametrize("case", PARSEABLE, ids=[case.id for case in PARSEABLE])
def test_no_literal_survives(case: Case) -> None:
    assert literal_values(case.sql), "the scanner found nothing to check"
    assert_masked(case.sql, mask_sql(case.sql), case.keep)


@pytest.mark.parametrize("case", PARSEABLE, ids=[case.id for case in PARSEABLE])
def test_masking_is_stable(case: Case) -> None:
    """The output parses again and masks to itself: it is SQL, not a mangled string."""
    out = mask_sql(case.sql)
    assert mask_sql(out) == out


@pytest.mark.parametrize("sql", MALFORMED)
def test_malformed_is_redacted_whole(sql: str) -> None:
    assert mask_sql(sql) == REDACTED


@pytest.mark.parametrize("sql", READ_AS_NAMES)
def test_literals_read_as_names_are_redacted_whole(sql: str) -> None:
    assert mask_sql(sql) == REDACTED


@pytest.mark.parametrize("sql", COMMANDS)
def test_commands_are_redacted_whole(sql: str) -> None:
    assert mask_sql(sql) == REDACTED


def test_examples_of_the_output() -> None:
    assert mask_sql("SELECT a FROM t WHERE b = 'x' AND c IN (1, 2) LIMIT 10") == (
        "SELECT a FROM t WHERE b = ? AND c IN (?, ?) LIMIT ?"
    )
    assert mask_sql("SELECT * FROM t WHERE d = DATE '2024-01-01' AND n = -5") == (
        "SELECT * FROM t WHERE d = CAST(? AS DATE) AND n = ?"
    )
    assert mask_sql("SELECT 1; SELECT 'two';") == "SELECT ?;\nSELECT ?"
    assert mask_sql("CREATE TABLE x WITH (format = 'ORC') AS SELECT 1") == (
        "CREATE TABLE x WITH (format='') AS SELECT ?"
    )


@pytest.mark.parametrize("sql", ["", "   \n\t", "-- just a comment 'secret'\n", "/* only 'secret' */", ";;"])
def test_empty_or_comment_only_gives_empty(sql: str) -> None:
    assert mask_sql(sql) == ""


def test_each_statement_uses_its_own_athena_engine() -> None:
    """sqlglot's Athena dialect tokenizes the whole text by the rules of its first statement: parsed in
    one go, the Hive string "s3://..." after a Trino SELECT would be read as an identifier and kept."""
    sql = 'SELECT 1; CREATE EXTERNAL TABLE t (a string) LOCATION "s3://secret-bucket/x/"'
    out = mask_sql(sql)
    assert "secret-bucket" not in out
    assert out == "SELECT ?;\nCREATE EXTERNAL TABLE t (a STRING) LOCATION ?"


def test_other_dialects() -> None:
    assert mask_sql("SELECT `a` FROM t WHERE b = 'x' AND c = 3", dialect="hive") == (
        "SELECT `a` FROM t WHERE b = ? AND c = ?"
    )
    assert mask_sql("SELECT a FROM t WHERE b = 'x' AND c = 3", dialect="trino") == (
        "SELECT a FROM t WHERE b = ? AND c = ?"
    )
    # The placeholder is the dialect's own: "%s" for postgres.
    assert mask_sql("SELECT a FROM t WHERE c = E'x'", dialect="postgres") == "SELECT a FROM t WHERE c = %s"


def test_bad_arguments_are_errors_not_redactions() -> None:
    with pytest.raises(TypeError, match="str"):
        mask_sql(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nope"):
        mask_sql("SELECT 1", dialect="nope")


def test_fails_closed_when_a_literal_escapes_the_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check of the output is independent of the transform: a transform that misses a literal
    (here: one that does nothing) redacts the text instead of returning it."""
    monkeypatch.setattr(masking, "_to_placeholder", lambda node: node)
    assert mask_sql("SELECT a FROM t WHERE b = 'x'") == REDACTED
    assert mask_sql("SELECT a FROM t") == "SELECT a FROM t"  # nothing to mask: nothing to miss


def test_fails_closed_on_any_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RecursionError("deeply nested")

    monkeypatch.setattr(masking, "_parse", boom)
    assert mask_sql("SELECT 1") == REDACTED


def test_deep_nesting_is_redacted_or_masked() -> None:
    sql = "SELECT " + "(" * 3000 + "'deep-secret'" + ")" * 3000
    assert mask_sql(sql) in (REDACTED, "SELECT " + "(" * 3000 + "?" + ")" * 3000)


def test_nothing_of_the_text_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for sql in [*COMMANDS, *MALFORMED, *READ_AS_NAMES, "SELECT * FROM t WHERE a = 'secret-lock' FOR UPDATE"]:
        mask_sql(sql)
    assert "secret" not in caplog.text


@pytest.mark.parametrize("sql", ["", "  ", "SELECT 1;", "MSCK REPAIR TABLE tpcds.store_sales", "SHOW TABLES"])
def test_sqlglot_warns_of_nothing_while_masking(sql: str, caplog: pytest.LogCaptureFixture) -> None:
    """sqlglot's "Falling back to parsing as a 'Command'" warning (one per such query in a collector run)
    does not reach the log; the statements are still redacted, blank text still gives ""."""
    caplog.set_level(logging.DEBUG)
    masked = mask_sql(sql)
    assert masked == {"": "", "  ": "", "SELECT 1;": "SELECT ?"}.get(sql, REDACTED)
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]


def test_sqlglot_still_warns_outside_masking(caplog: pytest.LogCaptureFixture) -> None:
    import sqlglot

    caplog.set_level(logging.WARNING, logger="sqlglot")
    sqlglot.parse_one("MSCK REPAIR TABLE tpcds.store_sales", read="athena")
    assert "Falling back to parsing as a 'Command'" in caplog.text


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT * FROM users WHERE email = "alice@example.com"',  # a string typed with double quotes
        'SELECT * FROM users WHERE "alice@example.com" = email',
        'SELECT * FROM users WHERE country IN ("DE", "FR")',
        "SELECT * FROM users WHERE note = $$secret note$$",
    ],
)
def test_double_quoted_values_and_dollar_strings_are_redacted_whole(sql):
    assert mask_sql(sql) == REDACTED


@pytest.mark.parametrize(
    ("sql", "kept"),
    [
        ("SELECT * FROM t WHERE \"date\" = DATE '2024-01-01'", '"date" = CAST(? AS DATE)'),
        ('SELECT a."x" FROM a JOIN b ON a."id" = b."id"', 'a."id" = b."id"'),
    ],
)
def test_quoted_names_used_as_names_are_kept(sql, kept):
    assert kept in mask_sql(sql)
