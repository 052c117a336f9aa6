"""Table- and column-level lineage of one SQL statement, with sqlglot: parse, qualify against the
catalog's schema, walk the scopes. What it resolves and what it refuses: docs/metadata-lineage.md.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope
from sqlglot.schema import MappingSchema

from tasks.metadata.masking import sqlglot_quiet

TableName = tuple[str, str, str]
"""``(catalog, database, table)``, lower case (Athena and Glue fold names to lower case)."""
ColumnName = tuple[str, str, str, str]
"""``(catalog, database, table, column)``, lower case."""


class Status(enum.StrEnum):
    """What became of a statement (docs/metadata-lineage.md, "Statuses")."""

    RESOLVED = "resolved"  # every table and column found in the catalog
    PARTIAL = "partial"  # every table found; some columns not, and their column edges left out
    UNRESOLVED = "unresolved"  # a table not in the catalog, or sqlglot could not qualify it: no edges
    UNPARSED = "unparsed"  # sqlglot could not parse it, or it is a kind not analysed (MERGE, UPDATE, ...)
    NOT_LINEAGE = "not_lineage"  # parsed, and moves no data between tables (DDL, SHOW, MSCK, ...)


class Transformation(enum.StrEnum):
    """How a target column derives from a source column: OpenLineage's DIRECT subtypes
    (ColumnLineageDatasetFacet 1-2-0, ``transformations[].subtype``)."""

    IDENTITY = "IDENTITY"
    TRANSFORMATION = "TRANSFORMATION"
    AGGREGATION = "AGGREGATION"


_RANK = {Transformation.IDENTITY: 0, Transformation.TRANSFORMATION: 1, Transformation.AGGREGATION: 2}


def _combine(a: Transformation, b: Transformation) -> Transformation:
    """A derivation through two steps: the stronger of the two (an aggregation anywhere aggregates)."""
    return a if _RANK[a] >= _RANK[b] else b


@dataclass(frozen=True)
class ColumnEdge:
    """``target`` is computed from ``source`` (a direct dependency: the value flows into it)."""

    source: ColumnName
    target: ColumnName
    transformation: Transformation


@dataclass(frozen=True)
class StatementLineage:
    """The lineage of one statement.

    ``kind``: ``SELECT``, ``CTAS``, ``INSERT``, ``CREATE_VIEW``, ``VIEW`` (a view's query) or ``OTHER``. ``reads``/``writes``: tables,
    sorted. ``columns_read``: every catalog column the statement references (projections, filters, joins,
    grouping; ``*`` expanded), sorted. ``edges``: column-level edges into ``writes`` (none for a SELECT).
    ``detail``: why the status is not ``resolved``, never a piece of the SQL text but for names of
    tables (counts of columns: a double-quoted column "name" may be a mistyped string), sqlglot's
    error class, a line and column.
    """

    kind: str
    status: Status
    detail: str = ""
    reads: tuple[TableName, ...] = ()
    writes: tuple[TableName, ...] = ()
    columns_read: tuple[ColumnName, ...] = ()
    edges: tuple[ColumnEdge, ...] = ()


class LineageSchema:
    """The columns of every table and view of a catalog, in order: what statements are qualified against.

    ``add(catalog, database, table, column, type)`` in ordinal order, then ``analyzer(...)``. Names are
    folded to lower case. Memory: about 200 bytes per column (10,000 tables of 20 columns: ~40 MB).
    """

    def __init__(self) -> None:
        self._tables: dict[TableName, dict[str, str]] = {}
        self._mapping: MappingSchema | None = None

    def add(self, catalog: str, database: str, table: str, column: str, data_type: str | None) -> None:
        key = (catalog.lower(), database.lower(), table.lower())
        self._tables.setdefault(key, {})[column.lower()] = data_type or "unknown"
        self._mapping = None

    def columns(self, table: TableName) -> list[str] | None:
        """The column names of ``table`` in order, None if the catalog has no such table."""
        columns = self._tables.get(table)
        return list(columns) if columns is not None else None

    def has_column(self, column: ColumnName) -> bool:
        return column[3] in self._tables.get(column[:3], ())

    def __contains__(self, table: object) -> bool:
        return table in self._tables

    def __len__(self) -> int:
        return len(self._tables)

    def mapping(self) -> MappingSchema:
        """sqlglot's schema of the tables: ``{catalog: {database: {table: {column: type}}}}``."""
        if self._mapping is None:
            nested: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
            for (catalog, database, table), columns in self._tables.items():
                nested.setdefault(catalog, {}).setdefault(database, {})[table] = dict.fromkeys(
                    columns, "unknown"
                )
            # Types are not needed for lineage; "unknown" keeps sqlglot from parsing Hive type strings.
            self._mapping = MappingSchema(nested, normalize=False)
        return self._mapping


#: Commands sqlglot keeps as raw text that move no data between tables (Athena SQL reference).
_NOT_LINEAGE_COMMANDS = frozenset(
    {"MSCK", "SHOW", "DESCRIBE", "DESC", "USE", "SET", "RESET", "EXPLAIN", "REFRESH", "VACUUM", "OPTIMIZE"}
)
#: Parsed statements that move no data between tables.
_NOT_LINEAGE_NODES: tuple[type[exp.Expr], ...] = (
    exp.Drop,
    exp.Alter,
    exp.Describe,
    exp.Use,
    exp.Set,
    exp.Show,
    exp.Analyze,
    exp.Grant,
    exp.Revoke,
    exp.Comment,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
)
_SYSTEM_DATABASES = frozenset({"information_schema"})


@dataclass
class _Walk:
    """What the scope walk collects."""

    reads: set[TableName] = field(default_factory=set)
    missing_tables: set[TableName] = field(default_factory=set)
    columns_read: set[ColumnName] = field(default_factory=set)
    unresolved_columns: set[str] = field(default_factory=set)


class SqlLineage:
    """Lineage of statements against one ``LineageSchema``.

    Args:
        schema: the catalog's tables and columns.
        default_catalog: the catalog of names without one (Athena: the query's ``Catalog`` context,
            ``AwsDataCatalog`` by default).
    """

    def __init__(self, schema: LineageSchema, default_catalog: str = "awsdatacatalog") -> None:
        self.schema = schema
        self.default_catalog = default_catalog.lower()
        self._dialects: dict[str, sqlglot.Dialect] = {}

    def _dialect(self, name: str) -> sqlglot.Dialect:
        """sqlglot's dialect ``name``, made once (making one per statement costs ~0.2 ms)."""
        if name not in self._dialects:
            self._dialects[name] = sqlglot.Dialect.get_or_raise(name)  # ValueError: unknown dialect
        return self._dialects[name]

    def analyze(
        self,
        sql: str,
        *,
        dialect: str = "athena",
        catalog: str | None = None,
        database: str | None = None,
        view: TableName | None = None,
    ) -> StatementLineage:
        """The lineage of ``sql`` (one statement) run with ``catalog``/``database`` as its context.

        ``view``: ``sql`` is the query of this view (kind ``VIEW``): its output columns are the view's
        columns, by position (the view's own columns in the schema, else the query's names).
        Never raises for bad SQL: the status says what became of it. ``ValueError`` for an unknown
        ``dialect`` (a configuration error).
        """
        reader = self._dialect(dialect)
        catalog = (catalog or self.default_catalog).lower()
        database = database.lower() if database else None
        with sqlglot_quiet():
            try:
                trees = [
                    t for t in sqlglot.parse(sql, read=dialect, error_message_context=0) if t is not None
                ]
            except ParseError as error:
                where = error.errors[0] if error.errors else {}
                return StatementLineage(
                    "OTHER",
                    Status.UNPARSED,
                    f"sqlglot could not parse it (line {where.get('line', '?')}, column {where.get('col', '?')})",
                )
            except (TokenError, SqlglotError) as error:
                return StatementLineage(
                    "OTHER", Status.UNPARSED, f"sqlglot could not read it ({type(error).__name__})"
                )
            if len(trees) != 1:
                detail = "no statement" if not trees else f"{len(trees)} statements (Athena runs one)"
                return StatementLineage("OTHER", Status.UNPARSED, detail)
            try:
                return self._statement(trees[0], reader, catalog, database, view)
            except SqlglotError as error:
                return StatementLineage(
                    _kind(trees[0]),
                    Status.UNRESOLVED,
                    f"sqlglot could not qualify it ({type(error).__name__})",
                )

    # --- statements --------------------------------------------------------------------------------

    def _statement(
        self,
        tree: exp.Expr,
        dialect: sqlglot.Dialect,
        catalog: str,
        database: str | None,
        view: TableName | None,
    ) -> StatementLineage:
        kind = _kind(tree)
        not_analysed = _not_analysed(tree, kind, view)
        if not_analysed is not None:
            return not_analysed
        if view is not None:
            kind = "VIEW"
        target = self._target(tree, kind, catalog, database, view)
        if isinstance(target, StatementLineage):
            return target
        writes = (target.table,) if target.table else ()
        if not isinstance(target.query, exp.Query):  # INSERT ... VALUES
            return StatementLineage(kind, Status.RESOLVED, writes=writes)
        scopes = self._scopes(target.query, dialect, catalog, database)
        walk = _Walk()
        for scope in scopes:
            self._collect(scope, walk)
        unresolved = _unresolved_reads(kind, walk, writes)
        if unresolved is not None:
            return unresolved
        edges = (
            self._column_edges(scopes[-1], target.table, target.columns, walk)
            if target.table is not None
            else set()
        )
        return _lineage(kind, walk, writes, edges)

    def _target(
        self, tree: exp.Expr, kind: str, catalog: str, database: str | None, view: TableName | None
    ) -> _Target | StatementLineage:
        """The query of the statement and the table (and columns) it writes; a ``StatementLineage`` when
        the target cannot be named (no table, no database, an INSERT into a table not in the catalog)."""
        if kind == "VIEW":
            return _Target(tree, view, self.schema.columns(view))
        if kind == "SELECT":
            return _Target(tree, None, None)
        name_node = tree.this
        listed = None
        if isinstance(name_node, exp.Schema):  # INSERT INTO t (a, b) / CREATE VIEW v (a, b)
            listed = [c.name.lower() for c in name_node.expressions]
            name_node = name_node.this
        if not isinstance(name_node, exp.Table):
            return StatementLineage(kind, Status.UNPARSED, "no target table")
        target = self._table_name(name_node, catalog, database)
        if target is None:
            return StatementLineage(kind, Status.UNRESOLVED, "the target table has no database")
        target_columns = listed
        if kind == "INSERT" and target_columns is None:
            target_columns = self.schema.columns(target)  # INSERT maps the query's columns by position
            if target_columns is None:
                return StatementLineage(
                    kind,
                    Status.UNRESOLVED,
                    f"target {_dotted(target)} not in the catalog",
                    writes=(target,),
                )
        return _Target(tree.expression, target, target_columns)

    def _scopes(
        self, query: exp.Query, dialect: sqlglot.Dialect, catalog: str, database: str | None
    ) -> list[Scope]:
        """The scopes of ``query`` qualified against the catalog's schema, the outermost last."""
        qualified = qualify(
            query,
            schema=self.schema.mapping(),
            catalog=catalog,
            db=database,
            dialect=dialect,
            validate_qualify_columns=False,
            quote_identifiers=False,
            identify=False,
        )
        return traverse_scope(qualified)

    def _column_edges(
        self, root: Scope, table: TableName, columns: list[str] | None, walk: _Walk
    ) -> set[ColumnEdge]:
        """The edges into the target's columns from the catalog columns each output is computed from,
        output and target column matched by position (a count that differs is an unresolved reference)."""
        outputs = _output_names(root)
        target_columns = outputs if columns is None else columns
        if len(target_columns) != len(outputs):
            walk.unresolved_columns.add(
                f"{len(outputs)} query columns for {len(target_columns)} target columns"
            )
        edges: set[ColumnEdge] = set()
        for position, (output, target_column) in enumerate(zip(outputs, target_columns, strict=False)):
            for source, how in self._trace(root, output, position, walk):
                edges.add(ColumnEdge(source, (*table, target_column), how))
        return edges

    def _table_name(self, table: exp.Table, catalog: str, database: str | None) -> TableName | None:
        db = (table.db or database or "").lower()
        if not db:
            return None
        return ((table.catalog or catalog).lower(), db, table.name.lower())

    # --- scopes ------------------------------------------------------------------------------------

    def _collect(self, scope: Scope, walk: _Walk) -> None:
        """Tables this scope reads, and the catalog columns it references."""
        for source in scope.sources.values():
            if isinstance(source, exp.Table) and source.name:
                name = self._physical(source)
                if name is None:
                    continue
                walk.reads.add(name)
                if name not in self.schema and name[1] not in _SYSTEM_DATABASES:
                    walk.missing_tables.add(name)
        for column in scope.columns:
            source = scope.sources.get(column.table)
            if isinstance(source, exp.Table):
                name = self._physical(source)
                if name is None or name[1] in _SYSTEM_DATABASES:
                    continue
                key = (*name, column.name.lower())
                if self.schema.has_column(key):
                    walk.columns_read.add(key)
                elif name in self.schema:
                    walk.unresolved_columns.add(f"{_dotted(name)}.{column.name}")
            elif source is None and not column.table and not _is_alias_reference(scope, column):
                walk.unresolved_columns.add(column.name)

    @staticmethod
    def _physical(table: exp.Table) -> TableName | None:
        if not table.db:
            return None
        return ((table.catalog or "").lower(), table.db.lower(), table.name.lower())

    def _trace(
        self, scope: Scope, name: str, position: int, walk: _Walk
    ) -> Iterator[tuple[ColumnName, Transformation]]:
        """Catalog columns output ``name`` (at ``position``) of ``scope`` is computed from."""
        if scope.set_operation_scopes:
            for branch in scope.set_operation_scopes:
                branch_outputs = _output_names(branch)
                if position < len(branch_outputs):
                    yield from self._trace(branch, branch_outputs[position], position, walk)
            return
        select = scope.expression
        if not isinstance(select, exp.Select):
            return
        projection = next((p for p in select.expressions if p.alias_or_name.lower() == name), None)
        if projection is None and position < len(select.expressions):
            projection = select.expressions[position]
        if projection is None:
            walk.unresolved_columns.add(name)
            return
        how = _how(projection)
        for column in _own_columns(projection):
            source = scope.sources.get(column.table)
            if isinstance(source, exp.Table):
                physical = self._physical(source)
                if physical is None:
                    continue
                key = (*physical, column.name.lower())
                if self.schema.has_column(key):
                    yield key, how
            elif isinstance(source, Scope):
                inner_outputs = _output_names(source)
                inner_name = column.name.lower()
                inner_position = (
                    inner_outputs.index(inner_name) if inner_name in inner_outputs else len(inner_outputs)
                )
                for key, inner_how in self._trace(source, inner_name, inner_position, walk):
                    yield key, _combine(how, inner_how)


class _Target(NamedTuple):
    """What a statement writes: its ``query``, the ``table`` (None for a SELECT) and the table's
    ``columns`` in the order the query fills them (None: the query's own names)."""

    query: exp.Expr
    table: TableName | None
    columns: list[str] | None


def _not_analysed(tree: exp.Expr, kind: str, view: TableName | None) -> StatementLineage | None:
    """Why a statement is not analysed (a view's query that is no SELECT, a raw command, a statement
    that moves no data, a kind not analysed), None when it is."""
    if view is not None and kind != "SELECT":
        return StatementLineage("VIEW", Status.UNPARSED, f"a view's query is a {type(tree).__name__}")
    if isinstance(tree, exp.Command):
        word = str(tree.this).split()[0].upper() if tree.this else ""
        if word in _NOT_LINEAGE_COMMANDS:
            return StatementLineage(kind, Status.NOT_LINEAGE, f"{word} moves no data between tables")
        return StatementLineage(kind, Status.UNPARSED, f"sqlglot keeps {word or 'it'} as raw text (Command)")
    if isinstance(tree, _NOT_LINEAGE_NODES) or (isinstance(tree, exp.Create) and kind == "OTHER"):
        return StatementLineage(
            kind, Status.NOT_LINEAGE, f"{type(tree).__name__} moves no data between tables"
        )
    if kind == "OTHER":
        return StatementLineage(kind, Status.UNPARSED, f"{type(tree).__name__} statements are not analysed")
    return None


def _unresolved_reads(kind: str, walk: _Walk, writes: tuple[TableName, ...]) -> StatementLineage | None:
    """The statement's result when what it reads leaves no lineage: only ``information_schema`` (and
    nothing written), or a table not in the catalog; None otherwise."""
    if walk.reads and all(table[1] in _SYSTEM_DATABASES for table in walk.reads) and not writes:
        return StatementLineage(kind, Status.NOT_LINEAGE, "reads only information_schema")
    if walk.missing_tables:
        names = ", ".join(_dotted(t) for t in sorted(walk.missing_tables))
        return StatementLineage(
            kind,
            Status.UNRESOLVED,
            f"not in the catalog: {names}",
            reads=tuple(sorted(walk.reads)),
            writes=writes,
        )
    return None


def _lineage(
    kind: str, walk: _Walk, writes: tuple[TableName, ...], edges: set[ColumnEdge]
) -> StatementLineage:
    """The lineage of an analysed statement: ``partial`` when a column reference was not resolved."""
    status = Status.PARTIAL if walk.unresolved_columns else Status.RESOLVED
    detail = ""
    if walk.unresolved_columns:
        # Counted, not named: a double-quoted "name" where a value belongs may be data (masking.py).
        detail = f"{len(walk.unresolved_columns)} column reference(s) not in the catalog"
    return StatementLineage(
        kind,
        status,
        detail,
        tuple(sorted(walk.reads)),
        writes,
        tuple(sorted(walk.columns_read)),
        tuple(sorted(edges, key=lambda e: (e.target, e.source))),
    )


def _kind(tree: exp.Expr) -> str:
    if isinstance(tree, exp.Query):
        return "SELECT"
    if isinstance(tree, exp.Insert):
        return "INSERT"
    if isinstance(tree, exp.Create):
        kind = str(tree.args.get("kind") or "").upper()
        if kind == "VIEW":
            return "CREATE_VIEW"
        if kind == "TABLE" and isinstance(tree.expression, exp.Query):
            return "CTAS"
    return "OTHER"


def _output_names(scope: Scope) -> list[str]:
    """The output column names of a scope's query (a set operation: its first branch's)."""
    node = scope.expression
    while isinstance(node, exp.SetOperation):
        node = node.this
    if isinstance(node, exp.Subquery):
        node = node.unnest()
    if isinstance(node, exp.Select):
        return [p.alias_or_name.lower() for p in node.expressions]
    return []


def _indirect(node: exp.Expr) -> bool:
    """A part of an expression whose columns the value does not flow from: nested queries (scopes of
    their own), a window's PARTITION BY and ORDER BY, a CASE's conditions (OpenLineage's INDIRECT
    WINDOW and CONDITIONAL)."""
    parent = node.parent
    if isinstance(node, exp.Query):
        return True
    if isinstance(parent, exp.Window) and node.arg_key in ("partition_by", "order"):
        return True
    return isinstance(parent, exp.If) and node.arg_key == "this"


def _own_columns(projection: exp.Expr) -> Iterable[exp.Column]:
    """The columns ``projection``'s value flows from (see ``_indirect`` for those it does not)."""
    for node in projection.walk(prune=lambda n: n is not projection and _indirect(n)):
        if isinstance(node, exp.Column) and not _indirect(node):
            yield node


def _how(projection: exp.Expr) -> Transformation:
    """IDENTITY for a bare (possibly renamed) column, AGGREGATION when an aggregate function (not a
    window) computes it, TRANSFORMATION otherwise."""
    node = projection.unalias() if isinstance(projection, exp.Alias) else projection
    if isinstance(node, exp.Column):
        return Transformation.IDENTITY
    for agg in node.find_all(exp.AggFunc):
        if not isinstance(agg.parent, exp.Window):
            return Transformation.AGGREGATION
    return Transformation.TRANSFORMATION


def _is_alias_reference(scope: Scope, column: exp.Column) -> bool:
    """An unqualified name outside the projections that names one of them (``ORDER BY total``)."""
    select = scope.expression
    if not isinstance(select, exp.Select):
        return False
    node: exp.Expr | None = column
    while node is not None and node.parent is not select:
        node = node.parent
    if node is None or node.arg_key == "expressions":
        return False
    return any(p.alias_or_name.lower() == column.name.lower() for p in select.expressions)


def _dotted(name: tuple[str, ...]) -> str:
    return ".".join(name)
