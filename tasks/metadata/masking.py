"""Mask the literals in SQL text (query history, view definitions) with sqlglot, failing closed.

The rule, what is redacted whole and why: docs/metadata-extracts.md ("Masked SQL").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel
from sqlglot.tokens import Token, TokenType

logger = logging.getLogger(__name__)

#: What a text that cannot be masked safely is replaced with, whole.
REDACTED = "<redacted: unparseable SQL>"

#: sqlglot expression types holding a literal value from the text.
_LITERAL_NODES: tuple[type[exp.Expr], ...] = (
    exp.Literal,
    exp.HexString,
    exp.BitString,
    exp.ByteString,
    exp.National,
    exp.RawString,
    exp.UnicodeString,
    exp.JSONPath,
)
#: sqlglot token types holding a literal value, for the check of the masked text.
_LITERAL_TOKENS = frozenset(
    {
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.BIT_STRING,
        TokenType.HEX_STRING,
        TokenType.BYTE_STRING,
        TokenType.NATIONAL_STRING,
        TokenType.NATIONAL_RAW_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
    }
)


class _Unmaskable(Exception):
    """The text cannot be masked safely; the caller redacts it whole."""


_quiet: ContextVar[bool] = ContextVar("sqlglot_quiet", default=False)


class _QuietWhileParsing(logging.Filter):
    """Drops what sqlglot logs inside ``sqlglot_quiet()`` in this thread or task: its warning on a
    statement it keeps as raw text ("'<the statement>' contains unsupported syntax. Falling back to
    parsing as a 'Command'") quotes the SQL, literals included, and would reach the user's log for
    every such query."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _quiet.get()


logging.getLogger("sqlglot").addFilter(_QuietWhileParsing())


@contextmanager
def sqlglot_quiet() -> Iterator[None]:
    """Nothing sqlglot logs inside reaches a log (its messages may quote SQL text). For every
    caller that parses SQL it has not masked: masking itself, lineage."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def mask_sql(text: str, dialect: str = "athena") -> str:
    """Return ``text`` with every literal replaced by ``?`` and comments dropped (see the module rule).

    Args:
        text: SQL text, one statement or several separated by ``;`` (e.g. an Athena
            ``QueryExecution.Query``).
        dialect: a sqlglot dialect name (``"athena"``, ``"trino"``, ...), used to read and to write.

    Returns:
        The masked statements joined by ``";\\n"``; ``""`` for empty text or nothing but comments;
        :data:`REDACTED` when the text cannot be masked safely. Never the input unmasked.

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: ``dialect`` is not a sqlglot dialect (a configuration error, not bad SQL).
    """
    if not isinstance(text, str):
        raise TypeError(f"mask_sql needs SQL text as a str, got {type(text).__name__}")
    reader = Dialect.get_or_raise(dialect)  # ValueError: Unknown dialect '...'
    if not text.strip():
        return ""
    try:
        with sqlglot_quiet():
            masked = [_mask_statement(statement, reader) for statement in _split(text, reader)]
    except Exception as error:  # fail closed on anything sqlglot raises
        logger.debug("SQL text redacted: %s", type(error).__name__)  # the message may quote the text
        return REDACTED
    return ";\n".join(sql for sql in masked if sql)


def _split(text: str, reader: Dialect) -> list[str]:
    """Cut ``text`` at the semicolons the dialect's tokenizer finds (not those in strings or comments)."""
    cuts = [token.start for token in reader.tokenize(text) if token.token_type == TokenType.SEMICOLON]
    starts = [0, *(cut + 1 for cut in cuts)]
    ends = [*cuts, len(text)]
    return [text[start:end] for start, end in zip(starts, ends, strict=True)]


def _mask_statement(statement: str, reader: Dialect) -> str:
    """Mask one statement's literals and check the result; ``""`` for a statement with no SQL in it."""
    if not statement.strip():
        return ""  # e.g. after the last ';': nothing to parse
    parsed = _parse(statement, reader)
    if parsed is None:
        return ""  # blank, or comments only
    tree, literal_tokens = parsed
    if "$$" in statement:
        raise _Unmaskable("a $$-quoted string (a literal in some dialects, not in this one)")
    if _quoted_name_as_value(tree):
        raise _Unmaskable("a double-quoted name used as a value (a mistyped string literal?)")
    if len(list(tree.find_all(*_LITERAL_NODES))) < literal_tokens:
        # sqlglot read a quoted string or number as something else, e.g. the name in `FROM 's3://x'`.
        raise _Unmaskable("a literal token is not a literal in the parse tree")
    masked = tree.transform(_to_placeholder).sql(
        dialect=reader, comments=False, unsupported_level=ErrorLevel.IGNORE
    )
    _check_masked(masked, reader)
    return masked


def _parse(sql: str, reader: Dialect) -> tuple[exp.Expr, int] | None:
    """Parse one statement as ``sqlglot.parse`` does: its tree and the number of literal tokens in it.

    ``None`` when there is no statement (blank or comments only). Raises ``_Unmaskable`` for several
    statements or a ``Command``, and sqlglot's ``TokenError``/``ParseError`` for bad SQL.
    """
    tokens = reader.tokenize(sql)
    # error_message_context=0: sqlglot's warning on a Command fallback would quote the statement.
    trees = [tree for tree in reader.parser(error_message_context=0).parse(tokens, sql) if tree is not None]
    if not trees:
        return None
    if len(trees) > 1:
        raise _Unmaskable("one statement parsed as several")
    if trees[0].find(exp.Command):
        raise _Unmaskable("sqlglot keeps this statement as raw text (Command)")
    if _has_split_number(tokens):
        raise _Unmaskable("a number that sqlglot reads (partly) as a name")
    return trees[0], sum(token.token_type in _LITERAL_TOKENS for token in tokens)


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike)


def _bare_quoted_column(node: exp.Expr | None) -> bool:
    """``"alice@example.com"``: a double-quoted column name without a table, where a query that
    meant a string would have one (users type ``WHERE email = "x"``; Athena reads it as a name)."""
    return (
        isinstance(node, exp.Column)
        and not node.table
        and isinstance(node.this, exp.Identifier)
        and node.this.quoted
    )


def _quoted_name_as_value(tree: exp.Expr) -> bool:
    """True when a bare double-quoted name stands where a value would: compared with another column,
    in an ``IN`` list or a ``VALUES`` row. Its text is data more often than not, so the statement
    is redacted whole (``"date" = ?`` against a literal is kept: that name is a column)."""
    for comparison in tree.find_all(*_COMPARISONS):
        left, right = comparison.this, comparison.expression
        if (_bare_quoted_column(left) and isinstance(right, exp.Column)) or (
            _bare_quoted_column(right) and isinstance(left, exp.Column)
        ):
            return True
    for in_list in tree.find_all(exp.In):
        if any(_bare_quoted_column(e) for e in in_list.expressions):
            return True
    return any(
        _bare_quoted_column(e) for values in tree.find_all(exp.Values) for e in values.find_all(exp.Column)
    )


def _has_split_number(tokens: list[Token]) -> bool:
    """A word starting with a digit (Hive reads ``1_000`` as a name), or glued to the number before it
    (Trino's ``1_000`` is tokenized as ``1`` and the alias ``_000``): digits that would not be masked."""
    previous: Token | None = None
    for token in tokens:
        if token.token_type == TokenType.VAR and (
            token.text[:1].isdigit()
            or (
                previous is not None
                and previous.token_type == TokenType.NUMBER
                and token.start == previous.end + 1
            )
        ):
            return True
        previous = token
    return False


def _to_placeholder(node: exp.Expr) -> exp.Expr:
    if isinstance(node, _LITERAL_NODES):
        return exp.Placeholder()
    if isinstance(node, exp.Neg) and isinstance(node.this, _LITERAL_NODES):
        return exp.Placeholder()  # -5 → ?, not -?
    return node


def _check_masked(sql: str, reader: Dialect) -> None:
    """Raise unless ``sql``, tokenized and parsed again, is one statement without comment or literal
    other than ``''``."""
    for token in reader.tokenize(sql):
        if token.comments:
            raise _Unmaskable("a comment survived")
        if token.token_type in _LITERAL_TOKENS and token.text != "":
            raise _Unmaskable(f"a {token.token_type.name} token survived")
    parsed = _parse(sql, reader)
    if parsed is None:
        raise _Unmaskable("the masked statement is empty")
    for node in parsed[0].find_all(*_LITERAL_NODES):
        if not (isinstance(node, exp.Literal) and node.is_string and node.this == ""):
            raise _Unmaskable(f"a literal survived: {type(node).__name__}")
