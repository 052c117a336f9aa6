"""Table- and column-level lineage of one SQL statement, with sqlglot: parse, qualify against the
catalog's schema, walk the scopes. What it resolves and what it refuses: docs/metadata-lineage.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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

    RESOLVED = "resolved"  # every table and column found, every target column traced: nothing lost
    PARTIAL = "partial"  # every table read found; some column lineage lost (said in ``detail``)
    UNRESOLVED = "unresolved"  # a table not in the catalog, or sqlglot could not qualify it: tables only
    UNPARSED = "unparsed"  # sqlglot could not parse it, keeps it as raw text, or several statements
    NOT_LINEAGE = "not_lineage"  # parsed, and moves no data between tables (DDL, SHOW, MSCK, ...)


class Transformation(enum.StrEnum):
    """How a target column derives from a source column: OpenLineage's DIRECT subtypes
    (ColumnLineageDatasetFacet 1-2-0, ``transformations[].subtype``)."""

    IDENTITY = "IDENTITY"
    TRANSFORMATION = "TRANSFORMATION"
    AGGREGATION = "AGGREGATION"


class Indirect(enum.StrEnum):
    """How a source column affects the written data without its value flowing into it: OpenLineage's
    INDIRECT subtypes (ColumnLineageDatasetFacet 1-2-0, ``transformations[].subtype``)."""

    JOIN = "JOIN"  # a join condition
    FILTER = "FILTER"  # WHERE, HAVING, QUALIFY, and the subqueries they hold
    GROUP_BY = "GROUP_BY"
    SORT = "SORT"  # ORDER BY
    WINDOW = "WINDOW"  # a window's PARTITION BY or ORDER BY, in one projection
    CONDITIONAL = "CONDITIONAL"  # a CASE/IF condition, or an IN/EXISTS subquery, in one projection


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
class IndirectEdge:
    """``source`` decides which rows or values are written without its value flowing into them.

    ``target``: the target column it affects when that is one column (``WINDOW``, ``CONDITIONAL`` of
    one projection); None when it affects the whole written dataset (``JOIN``, ``FILTER``,
    ``GROUP_BY``, ``SORT``).
    """

    source: ColumnName
    subtype: Indirect
    target: ColumnName | None = None


@dataclass(frozen=True)
class StatementLineage:
    """The lineage of one statement.

    ``kind``: ``SELECT``, ``CTAS`` (also ``SELECT ... INTO``), ``INSERT`` (also MySQL's ``REPLACE``),
    ``UPDATE``, ``DELETE``, ``MERGE``, ``CREATE_VIEW``, ``VIEW`` (a view's query) or ``OTHER``.
    ``reads``/``writes``: tables, sorted; the tables read are kept whatever became of the columns
    (``unresolved`` too, named as the statement names them). The table an UPDATE, DELETE or MERGE
    writes is no read of it (its own rows are no source), unless the statement reads it again in a
    subquery. ``columns_read``: every catalog column the statement references (projections, filters,
    joins, grouping; ``*`` expanded), sorted. ``edges``: column-level DIRECT edges into ``writes``
    (none for a SELECT or a DELETE; none from the written table's own columns).
    ``indirect``: INDIRECT column dependencies of ``writes`` (JOIN, FILTER, ...), sorted.
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
    indirect: tuple[IndirectEdge, ...] = ()


class LineageSchema:
    """The columns of every table and view of a catalog, in order: what statements are qualified against.

    ``add(catalog, database, table, column, type)`` in ordinal order, then ``analyzer(...)``. Names are
    folded to lower case. Memory: about 200 bytes per column (10,000 tables of 20 columns: ~40 MB).
    """

    def __init__(self) -> None:
        self._tables: dict[TableName, dict[str, str]] = {}
        self._mapping: MappingSchema | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_tables": self._tables, "_mapping": None}  # sqlglot's schema is rebuilt on demand

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
    exp.TruncateTable,
)
_SYSTEM_DATABASES = frozenset({"information_schema"})
#: Dialect names sqlglot spells otherwise: standard SQL is its base dialect "".
_DIALECT_ALIASES = {"ansi": "", "sparksql": "spark"}
#: The clause of a SELECT an INDIRECT dependency comes from (``arg_key`` of the clause).
_CLAUSES = {
    "joins": Indirect.JOIN,
    "where": Indirect.FILTER,
    "having": Indirect.FILTER,
    "qualify": Indirect.FILTER,
    "group": Indirect.GROUP_BY,
    "order": Indirect.SORT,
}


class _Flow(NamedTuple):
    """Where an output column of a scope comes from: the catalog columns its value flows from (and how),
    those that decide it (WINDOW, CONDITIONAL), and whether some of its sources could not be traced."""

    direct: frozenset[tuple[ColumnName, Transformation]]
    indirect: frozenset[tuple[ColumnName, Indirect]]
    lost: bool


_EMPTY = _Flow(frozenset(), frozenset(), False)
_LOST = _Flow(frozenset(), frozenset(), True)


@dataclass
class _Walk:
    """What the scope walk collects."""

    reads: set[TableName] = field(default_factory=set)
    missing_tables: set[TableName] = field(default_factory=set)
    unnamed_tables: int = 0  # tables without a database, and none by default
    columns_read: set[ColumnName] = field(default_factory=set)
    unresolved_columns: set[str] = field(default_factory=set)
    lost: list[str] = field(default_factory=list)  # other column lineage lost, as said in ``detail``


class SqlLineage:
    """Lineage of statements against one ``LineageSchema``.

    Unquoted and quoted identifiers alike are matched to the catalog case-insensitively (the catalog
    folds names to lower case): sqlglot's normalization strategy ``case_insensitive`` on the dialect.

    Args:
        schema: the catalog's tables and columns.
        default_catalog: the catalog of names without one (Athena: the query's ``Catalog`` context,
            ``AwsDataCatalog`` by default).
    """

    def __init__(self, schema: LineageSchema, default_catalog: str = "awsdatacatalog") -> None:
        self.schema = schema
        self.default_catalog = default_catalog.lower()
        self._dialects: dict[str, sqlglot.Dialect] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dialects": {}}  # dialects are made again where it is unpickled

    def _dialect(self, name: str | None) -> sqlglot.Dialect:
        """sqlglot's dialect ``name`` folding identifiers to lower case, made once (making one per
        statement costs ~0.2 ms). ``""``, None or ``ansi``: sqlglot's base dialect (standard SQL).
        ``ValueError`` for an unknown dialect."""
        key = name or ""
        if key not in self._dialects:
            base = _DIALECT_ALIASES.get(key.lower(), key)
            sqlglot.Dialect.get_or_raise(base)  # ValueError naming the unknown dialect
            self._dialects[key] = sqlglot.Dialect.get_or_raise(
                f"{base}, normalization_strategy = case_insensitive"
            )
        return self._dialects[key]

    def analyze(
        self,
        sql: str,
        *,
        dialect: str | None = "athena",
        catalog: str | None = None,
        database: str | None = None,
        view: TableName | None = None,
    ) -> StatementLineage:
        """The lineage of ``sql`` (one statement; a trailing ``;`` and comments are no statement) run
        with ``catalog``/``database`` as its context.

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
                trees = _statements(sql, reader)
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
            kind = "VIEW" if view is not None else _kind(trees[0])
            try:
                if isinstance(trees[0], exp.MultitableInserts) and view is None:
                    return _merge(
                        [self._statement(t, reader, catalog, database, None) for t in _inserts(trees[0])]
                    )
                return self._statement(trees[0], reader, catalog, database, view)
            except (SqlglotError, RecursionError) as error:
                # The tree may be half qualified: the tables read come from a fresh parse.
                reads, writes = self._tree_tables(_statements(sql, reader)[0], catalog, database, view)
                return StatementLineage(
                    kind,
                    Status.UNRESOLVED,
                    f"sqlglot could not qualify it ({type(error).__name__})",
                    reads=reads,
                    writes=writes,
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
        if isinstance(tree, exp.Update | exp.Delete | exp.Merge):
            return self._dml(tree, kind, dialect, catalog, database)
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
        unresolved = _unresolved_reads(kind, walk, writes, target.unnamed)
        if unresolved is not None:
            return unresolved
        edges: set[ColumnEdge] = set()
        indirect: set[IndirectEdge] = set()
        if target.table is not None:
            tracer = _Tracer(self, scopes)
            if target.lost:  # no column edges, never a guess by name
                walk.lost.append(target.lost)
                indirect = {IndirectEdge(s, k) for s, k in tracer.dataset_indirect(scopes[-1])}
            else:
                edges, indirect = tracer.edges(scopes[-1], target.table, target.columns, walk)
                if isinstance(tree, exp.Insert) and isinstance(tree.args.get("conflict"), exp.OnConflict):
                    edges |= _conflict_edges(tree.args["conflict"], target.table, edges, walk)
            if target.note:
                walk.lost.append(target.note)
        return _lineage(kind, walk, writes, edges, indirect)

    def _dml(
        self, tree: exp.Expr, kind: str, dialect: sqlglot.Dialect, catalog: str, database: str | None
    ) -> StatementLineage:
        """An UPDATE, DELETE or MERGE, analysed as the SELECT it runs (``_plan``): the written tables'
        nodes are marked, so their own columns are no source and they are no read."""
        try:
            plan = self._plan(tree, catalog, database)
        except _Unsupported as error:
            return StatementLineage(kind, Status.UNPARSED, str(error))
        names = [self._table_name(node, catalog, database) for node in plan.tables]
        writes = tuple(sorted({name for name in names if name is not None}))
        unnamed = sum(name is None for name in names)
        scopes = self._scopes(plan.query, dialect, catalog, database)
        walk = _Walk(lost=list(plan.lost))
        for scope in scopes:
            self._collect(scope, walk)
        unresolved = _unresolved_reads(kind, walk, writes, unnamed)
        if unresolved is not None:
            return unresolved
        missing = [name for name in writes if name not in self.schema]
        if missing:  # which side an unqualified column is on cannot be known: no column lineage
            walk.lost.append("target " + ", ".join(_dotted(t) for t in missing) + " not in the catalog")
            return _lineage(kind, walk, writes, set(), set())
        tracer = _Tracer(self, scopes)
        root = scopes[-1]
        edges: set[ColumnEdge] = set()
        indirect: set[IndirectEdge] = set()
        untraced = 0
        for position, out in enumerate(plan.outputs):
            table = names[out.table] if out.table >= 0 else None
            if table is None:  # read only: what it reads is kept, where it goes is said in ``lost``
                continue
            flow = tracer.output(root, position)
            if out.column is not None:
                target = (*table, out.column)
                untraced += flow.lost
                edges.update(ColumnEdge(source, target, how) for source, how in flow.direct)
                indirect.update(IndirectEdge(source, k, target) for source, k in flow.indirect)
                continue
            sources = {source for source, _ in flow.direct} | {source for source, _ in flow.indirect}
            for source in sources:
                if not out.decides:
                    indirect.add(IndirectEdge(source, Indirect.FILTER))
                for which, column in out.decides:
                    decided = names[which]
                    if decided is not None:
                        indirect.add(IndirectEdge(source, Indirect.CONDITIONAL, (*decided, column)))
        if untraced:
            walk.lost.append(f"{untraced} target column(s) not traced to the catalog")
        indirect.update(IndirectEdge(source, k) for source, k in tracer.dataset_indirect(root))
        return _lineage(kind, walk, writes, edges, indirect)

    def _plan(self, tree: exp.Expr, catalog: str, database: str | None) -> _DmlPlan:
        """The SELECT an UPDATE, DELETE or MERGE runs: the written table joined to every table it reads
        (``UPDATE ... FROM``, MySQL's ``UPDATE a JOIN b`` and ``DELETE a FROM a JOIN b``, ``DELETE ...
        USING``, ``MERGE ... USING ... ON``), with its ``WHERE`` (and MySQL's ``ORDER BY``) and CTEs,
        projecting each value it writes and each ``WHEN`` condition (one ``_Out`` each). What it cannot
        map is said in ``lost``; ``_Unsupported`` when it writes no table it names."""
        target = tree.this
        if not isinstance(target, exp.Table):
            raise _Unsupported(f"a {type(tree).__name__} of a {type(target).__name__}")
        joins: list[exp.Join] = list(target.args.get("joins") or [])
        target.set("joins", None)
        # MySQL's multi-table UPDATE a JOIN b SET ...: a SET column may be of any of them; elsewhere
        # (UPDATE t ... FROM ...) it is the target's (Postgres reference, "UPDATE": column_name).
        named = [target, *(join.this for join in joins)]
        for relation, on in _dml_sources(tree):
            more = list(relation.args.get("joins") or [])
            relation.set("joins", None)
            joins.append(exp.Join(this=relation, on=on) if on is not None else exp.Join(this=relation))
            joins.extend(more)
        relations = [target, *(join.this for join in joins)]
        lost: list[str] = []
        plan = _DmlPlan(exp.Select(), [], [], lost)

        def write(node: exp.Table) -> int:
            for index, seen in enumerate(plan.tables):
                if seen is node:
                    return index
            node.meta[_TARGET] = True
            plan.tables.append(node)
            return len(plan.tables) - 1

        def output(value: exp.Expr, out: _Out) -> None:
            plan.query.append("expressions", exp.alias_(value, f"_lineage_{len(plan.outputs)}"))
            plan.outputs.append(out)

        if isinstance(tree, exp.Update):
            single = target if len(named) == 1 else None
            for item in tree.expressions:
                if not isinstance(item, exp.EQ):
                    lost.append(f"a SET of a {type(item).__name__}")
                    continue
                node = None
                if isinstance(item.this, exp.Column):
                    node = self._written(item.this, named, single, catalog, database)
                if node is None:  # SET (a, b) = (SELECT ...), or a column of no one table
                    lost.append("a SET item not traced")
                    output(item.expression, _Out(-1, None))
                    continue
                output(item.expression, _Out(write(node), item.this.name.lower()))
            if not plan.tables:
                write(target)
            if len(plan.tables) > 1:  # what each reads of the others is no read and no edge
                lost.append(f"an UPDATE of {len(plan.tables)} tables: edges between them not traced")
        elif isinstance(tree, exp.Delete):
            named = [t.name.lower() for t in tree.args.get("tables") or []]  # MySQL: DELETE a, b FROM ...
            for node in relations if named else [target]:
                if isinstance(node, exp.Table) and (not named or node.alias_or_name.lower() in named):
                    write(node)
            if not plan.tables:
                raise _Unsupported("a DELETE of no table it names")
        else:
            self._merge_plan(tree, write(target), target, output, lost, catalog, database)
        if not plan.outputs:  # a DELETE, or nothing mapped: a literal, which decides nothing
            plan.query.append("expressions", exp.alias_(exp.Literal.number(1), "_lineage_0"))
            plan.outputs.append(_Out(0, None))
        plan.query.set("from_", exp.From(this=target))
        if joins:
            plan.query.set("joins", joins)
        for arg in ("where", "order", "with_"):
            if tree.args.get(arg):
                plan.query.set(arg, tree.args[arg])
        return plan

    def _merge_plan(
        self,
        tree: exp.Expr,
        index: int,
        target: exp.Table,
        output: Callable[[exp.Expr, _Out], None],
        lost: list[str],
        catalog: str,
        database: str | None,
    ) -> None:
        """The outputs of a MERGE's ``WHEN`` clauses: the values of ``UPDATE SET t.c = s.x`` and of
        ``INSERT (c, ...) VALUES (s.x, ...)`` (without a column list: the target's columns in order;
        its unqualified names are the source's: the target has no row), and each clause's condition
        (CONDITIONAL on the columns it writes; FILTER for a ``THEN DELETE``)."""
        source = tree.args.get("using")
        source_alias = source.alias_or_name if isinstance(source, exp.Table | exp.Subquery) else ""
        whens = tree.args.get("whens")
        for when in whens.expressions if isinstance(whens, exp.Whens) else []:
            then = when.args.get("then")
            values: list[tuple[str, exp.Expr]] = []
            if isinstance(then, exp.Update):
                for item in then.expressions:
                    if not isinstance(item, exp.EQ) or not isinstance(item.this, exp.Column):
                        lost.append(f"an UPDATE SET {type(item).__name__}")  # Spark's UPDATE SET *
                        continue
                    values.append((item.this.name.lower(), item.expression))
            elif isinstance(then, exp.Insert):
                row = then.expression
                listed = then.this
                names = (
                    [c.name.lower() for c in listed.expressions]
                    if isinstance(listed, exp.Tuple | exp.Schema)
                    else self.schema.columns(self._table_name(target, catalog, database) or ("", "", ""))
                )
                if not isinstance(row, exp.Tuple) or names is None or len(names) != len(row.expressions):
                    lost.append("an INSERT whose values match no target columns")  # or Spark's INSERT *
                    continue
                for value in row.expressions:
                    for column in value.find_all(exp.Column):
                        if not column.table and source_alias:
                            column.set("table", exp.to_identifier(source_alias))
                values.extend(zip(names, row.expressions, strict=True))
            elif not (isinstance(then, exp.Var) and then.name.upper() == "DELETE"):
                lost.append(f"a WHEN ... THEN {type(then).__name__}")
                continue
            for column, value in values:
                output(value, _Out(index, column))
            condition = when.args.get("condition")
            if condition is not None:
                output(condition, _Out(index, None, tuple((index, column) for column, _ in values)))

    def _written(
        self,
        column: exp.Column,
        relations: list[exp.Expr],
        default: exp.Table | None,
        catalog: str,
        database: str | None,
    ) -> exp.Table | None:
        """The table a SET column is of: the one its qualifier names, else the only table (of those
        the UPDATE names) whose catalog columns have it; None when that is not one table."""
        qualifier = column.table.lower()
        tables = [r for r in relations if isinstance(r, exp.Table)]
        if qualifier:
            named = [t for t in tables if t.alias_or_name.lower() == qualifier]
            return named[0] if len(named) == 1 else None
        if default is not None:
            return default
        having = []
        for table in tables:
            name = self._table_name(table, catalog, database)
            if name is not None and self.schema.has_column((*name, column.name.lower())):
                having.append(table)
        return having[0] if len(having) == 1 else None

    def _target(
        self, tree: exp.Expr, kind: str, catalog: str, database: str | None, view: TableName | None
    ) -> _Target | StatementLineage:
        """The query of the statement and the table (and columns) it writes; a ``StatementLineage`` when
        it writes no table sqlglot can name."""
        if kind == "VIEW":
            return _Target(_body(tree), view, self.schema.columns(view))
        if kind == "SELECT":
            return _Target(_body(tree), None, None)
        if isinstance(tree, exp.Select):  # SELECT ... INTO t: the INTO clause names the table it creates
            into = tree.args["into"]
            tree.set("into", None)
            name_node, query = into.this, tree
        else:
            name_node, query = tree.this, _body(tree.expression)
            _lift_with(tree, query)
        listed = None
        if isinstance(name_node, exp.Schema):  # INSERT INTO t (a, b) / CREATE VIEW v (a, b)
            listed = [c.name.lower() for c in name_node.expressions]
            name_node = name_node.this
        if not isinstance(name_node, exp.Table):  # INSERT OVERWRITE DIRECTORY '...': reads only
            return _Target(query, None, None)
        table = self._table_name(name_node, catalog, database)
        if table is None:
            return _Target(query, None, None, unnamed=1)
        if kind != "INSERT":
            return _Target(query, table, listed)
        columns = self.schema.columns(table)
        if columns is None:  # an INSERT writes a table that exists: the catalog does not know it
            missing = f"target {_dotted(table)} not in the catalog"
            if listed is not None or tree.args.get("by_name"):
                return _Target(query, table, listed, note=missing)
            return _Target(query, table, None, lost=missing)
        if listed is not None or tree.args.get("by_name"):
            return _Target(query, table, listed)
        # INSERT without a column list fills the table's columns by position, less those a Hive
        # PARTITION (k = 'v') clause sets.
        partition = name_node.args.get("partition")
        if isinstance(partition, exp.Partition):
            static = {e.this.name.lower() for e in partition.expressions if isinstance(e, exp.EQ)}
            columns = [c for c in columns if c not in static]
        return _Target(query, table, columns)

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

    def _table_name(self, table: exp.Table, catalog: str, database: str | None) -> TableName | None:
        db = (table.db or database or "").lower()
        if not db:
            return None
        return ((table.catalog or catalog).lower(), db, table.name.lower())

    def _tree_tables(
        self, tree: exp.Expr | None, catalog: str, database: str | None, view: TableName | None
    ) -> tuple[tuple[TableName, ...], tuple[TableName, ...]]:
        """The tables a parsed, unqualified statement reads and writes, as it names them (CTEs are no
        tables): what survives when its columns cannot be resolved."""
        if tree is None:
            return (), ()
        targets: list[exp.Expr] = []
        if view is None:
            for node in tree.find_all(exp.Insert, exp.Create, exp.Into):
                name_node = node.this.this if isinstance(node.this, exp.Schema) else node.this
                if isinstance(name_node, exp.Table):
                    targets.append(name_node)
            if isinstance(tree, exp.Update | exp.Delete | exp.Merge) and isinstance(tree.this, exp.Table):
                targets.append(tree.this)
        ignored = list(tree.args.get("tables") or []) if isinstance(tree, exp.Delete) else []
        ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        reads: set[TableName] = set()
        for node in tree.find_all(exp.Table):
            if (
                any(node is t for t in targets)
                or any(node is t for t in ignored)  # MySQL's DELETE a FROM ...: an alias
                or not node.name
                or (not node.db and node.name.lower() in ctes)
            ):
                continue
            name = self._table_name(node, catalog, database)
            if name is not None:
                reads.add(name)
        writes = {self._table_name(t, catalog, database) for t in targets if isinstance(t, exp.Table)}
        written = sorted(w for w in writes if w) if view is None else [view]
        return tuple(sorted(reads)), tuple(written)

    # --- scopes ------------------------------------------------------------------------------------

    def _collect(self, scope: Scope, walk: _Walk) -> None:
        """Tables this scope reads, and the catalog columns it references."""
        for source in scope.sources.values():
            if isinstance(source, exp.Table) and source.name and not source.meta_get(_TARGET):
                name = self._physical(source)
                if name is None:
                    walk.unnamed_tables += 1
                    continue
                walk.reads.add(name)
                if name not in self.schema and name[1] not in _SYSTEM_DATABASES:
                    walk.missing_tables.add(name)
        for column in scope.columns:
            source = _source(scope, column.table)
            if isinstance(source, exp.Table):
                name = self._physical(source)
                if name is None or name[1] in _SYSTEM_DATABASES:
                    continue
                key = (*name, column.name.lower())
                if self.schema.has_column(key):
                    walk.columns_read.add(key)
                elif name in self.schema:
                    walk.unresolved_columns.add(f"{_dotted(name)}.{column.name}")
            elif source is None and not _is_alias_reference(scope, column):
                walk.unresolved_columns.add(f"{column.table}.{column.name}")

    @staticmethod
    def _physical(table: exp.Table) -> TableName | None:
        if not table.db:
            return None
        return ((table.catalog or "").lower(), table.db.lower(), table.name.lower())


class _Tracer:
    """Traces the output columns of one qualified statement's scopes to catalog columns (memoized per
    scope and position: a CTE read twice is traced once)."""

    def __init__(self, lineage: SqlLineage, scopes: list[Scope]) -> None:
        self.lineage = lineage
        self.scope_of = {id(scope.expression): scope for scope in scopes}
        self.flows: dict[tuple[int, int], _Flow] = {}

    def edges(
        self, root: Scope, table: TableName, columns: list[str] | None, walk: _Walk
    ) -> tuple[set[ColumnEdge], set[IndirectEdge]]:
        """The DIRECT edges into the target's columns, matched to the query's outputs by position, and
        the INDIRECT ones (a count that differs, an output not traced: lineage lost)."""
        outputs = _output_names(root)
        target_columns = outputs if columns is None else columns
        if columns is not None and len(target_columns) != len(outputs):
            walk.lost.append(f"{len(outputs)} query columns for {len(target_columns)} target columns")
        edges: set[ColumnEdge] = set()
        indirect: set[IndirectEdge] = set()
        untraced = 0
        for position, target_column in enumerate(target_columns[: len(outputs)]):
            target = (*table, target_column)
            flow = self.output(root, position)
            untraced += flow.lost
            edges.update(ColumnEdge(source, target, how) for source, how in flow.direct)
            indirect.update(IndirectEdge(source, kind, target) for source, kind in flow.indirect)
        if untraced:
            walk.lost.append(f"{untraced} target column(s) not traced to the catalog")
        for source, kind in self.dataset_indirect(root):
            indirect.add(IndirectEdge(source, kind))
        return edges, indirect

    def output(self, scope: Scope, position: int) -> _Flow:
        """The flow of the output column at ``position`` of ``scope``."""
        # A recursive CTE's reference to itself is a scope of its own over the same query.
        scope = self.scope_of.get(id(scope.expression), scope)
        key = (id(scope), position)
        flow = self.flows.get(key)
        if flow is None:
            self.flows[key] = _EMPTY  # a recursive CTE's reference to itself adds nothing
            flow = self.flows[key] = self._output(scope, position)
        return flow

    def _output(self, scope: Scope, position: int) -> _Flow:
        node = scope.expression
        if isinstance(node, exp.SetOperation):
            branches = [self.output(branch, position) for branch in scope.set_operation_scopes]
            return _union(branches) if branches else _LOST
        if isinstance(node, exp.Lateral | exp.Unnest) or scope.is_udtf:
            inner = self._lateral_query(scope)
            return self.output(inner, position) if inner is not None else _LOST
        if isinstance(node, exp.Values):
            return _EMPTY  # literals
        if not isinstance(node, exp.Select) or position >= len(node.expressions):
            return _LOST
        return self._projection(scope, node.expressions[position])

    def _lateral_query(self, scope: Scope) -> Scope | None:
        """The derived table of ``LATERAL (SELECT ...)``; None for a table function (UNNEST, explode)."""
        this = scope.expression.this if isinstance(scope.expression, exp.Lateral) else None
        if isinstance(this, exp.Subquery):
            return self.scope_of.get(id(this.unnest()))
        return None

    def _projection(self, scope: Scope, projection: exp.Expr) -> _Flow:
        if isinstance(projection.unalias(), exp.Star) or (
            isinstance(projection, exp.Column) and projection.is_star
        ):
            return _LOST  # a * sqlglot could not expand: the table's columns are not known
        how = _how(projection)
        direct: set[tuple[ColumnName, Transformation]] = set()
        indirect: set[tuple[ColumnName, Indirect]] = set()
        lost = False
        for node, role in _column_roles(projection):
            flow = self.column(scope, node) if isinstance(node, exp.Column) else self._scalar(node)
            if role is None:
                lost = lost or flow.lost
                direct.update((source, _combine(how, inner)) for source, inner in flow.direct)
                indirect.update(flow.indirect)
            else:  # what decides a condition or a window decides the output
                indirect.update((source, role) for source, _ in flow.direct)
                indirect.update((source, role) for source, _ in flow.indirect)
        return _Flow(frozenset(direct), frozenset(indirect), lost)

    def _subquery(self, node: exp.Expr) -> _Flow:
        """The flow of a scalar subquery's (or an IN/EXISTS subquery's) first output column."""
        scope = self.scope_of.get(id(node.unnest() if isinstance(node, exp.Subquery) else node))
        return self.output(scope, 0) if scope is not None else _LOST

    def _scalar(self, node: exp.Expr) -> _Flow:
        """The flow of a subquery in a projection: its first output column, and what its own joins,
        filters and groupings read decides that output (CONDITIONAL)."""
        flow = self._subquery(node)
        scope = self.scope_of.get(id(node.unnest() if isinstance(node, exp.Subquery) else node))
        if scope is None:
            return flow
        decides = self.dataset_indirect(scope, Indirect.CONDITIONAL)
        return flow._replace(indirect=flow.indirect | decides)

    def column(self, scope: Scope, column: exp.Column) -> _Flow:
        """The flow of a column reference: a catalog column, or an output of a CTE or derived table."""
        source = _source(scope, column.table)
        name = column.name.lower()
        if isinstance(source, exp.Table):
            if source.meta_get(_TARGET):  # the written row's own value: no lineage between tables
                return _EMPTY
            physical = SqlLineage._physical(source)
            if physical is None or not self.lineage.schema.has_column((*physical, name)):
                return _LOST
            return _Flow(frozenset({((*physical, name), Transformation.IDENTITY)}), frozenset(), False)
        if isinstance(source, Scope):
            if isinstance(source.expression, exp.Values):
                return _EMPTY  # (VALUES ...) AS v(a, b): literals
            if source.is_udtf:
                inner = self._lateral_query(source)
                if inner is None:
                    return _LOST
                source = inner
            outputs = _output_names(source)
            if name in outputs:
                return self.output(source, outputs.index(name))
            return _LOST
        if not column.table:  # an alias of the same SELECT (ORDER BY total)
            select = scope.expression
            if isinstance(select, exp.Select):
                names = [p.alias_or_name.lower() for p in select.expressions]
                if name in names:
                    return self.output(scope, names.index(name))
        return _LOST

    def dataset_indirect(
        self, root: Scope, forced: Indirect | None = None
    ) -> set[tuple[ColumnName, Indirect]]:
        """INDIRECT dependencies of the whole output of ``root``: the columns of the join conditions,
        filters, groupings and orderings of every scope it is computed from (CTEs, derived tables,
        set-operation branches), and everything a subquery in such a clause reads (``WHERE x IN (SELECT
        y ...)``: ``x`` and ``y`` filter). ``forced``: the subtype of every dependency found (what a
        subquery in a clause reads takes the clause's)."""
        found: set[tuple[ColumnName, Indirect]] = set()
        seen: set[int] = set()
        pending = [root]
        while pending:
            scope = pending.pop()
            if id(scope) in seen:
                continue
            seen.add(id(scope))
            pending.extend(s for s in scope.sources.values() if isinstance(s, Scope))
            pending.extend(scope.set_operation_scopes)
            select = scope.expression
            if not isinstance(select, exp.Select):
                continue
            for arg, clause_kind in _CLAUSES.items():
                kind = forced or clause_kind
                clause = select.args.get(arg)
                for part in clause if isinstance(clause, list) else [clause] if clause else []:
                    if arg == "joins":
                        part = part.args.get("on")  # a USING was made an ON by qualify
                        if part is None:
                            continue
                    for node in part.walk(prune=lambda n: isinstance(n, exp.Query | exp.Subquery)):
                        if isinstance(node, exp.Column):
                            flow = self.column(scope, node)
                        elif isinstance(node, exp.Query | exp.Subquery) and node is not part:
                            flow = self._subquery(node)
                            inner = self.scope_of.get(
                                id(node.unnest() if isinstance(node, exp.Subquery) else node)
                            )
                            if inner is not None:
                                found.update(self.dataset_indirect(inner, kind))
                        else:
                            continue
                        found.update((source, kind) for source, _ in flow.direct)
                        found.update((source, kind) for source, _ in flow.indirect)
        return found


_TARGET = "lineage_target"  # meta key of the node of a table an UPDATE, DELETE or MERGE writes


class _Unsupported(Exception):
    """An UPDATE, DELETE or MERGE whose written table cannot be named."""


class _Out(NamedTuple):
    """An output of the SELECT an UPDATE, DELETE or MERGE runs: a value written into ``column`` of the
    written table ``table`` (an index of ``_DmlPlan.tables``), or (``column`` None) a condition that
    decides the ``decides`` columns (CONDITIONAL) or, deciding none, which rows are written (FILTER)."""

    table: int  # -1: an output read only (a SET item not traced): its tables are kept
    column: str | None
    decides: tuple[tuple[int, str], ...] = ()


class _DmlPlan(NamedTuple):
    """The SELECT an UPDATE, DELETE or MERGE runs (``SqlLineage._plan``), the nodes of the tables it
    writes, what each of its outputs is, and what column lineage could not be mapped."""

    query: exp.Select
    tables: list[exp.Table]
    outputs: list[_Out]
    lost: list[str]


def _dml_sources(tree: exp.Expr) -> list[tuple[exp.Expr, exp.Expr | None]]:
    """The relations an UPDATE (``FROM``), DELETE (``USING``) or MERGE (``USING ... ON``) reads besides
    its target, each with its join condition (MERGE's ``ON``)."""
    if isinstance(tree, exp.Merge):
        source = tree.args.get("using")
        return [(source, tree.args.get("on"))] if isinstance(source, exp.Expr) else []
    relations: list[tuple[exp.Expr, exp.Expr | None]] = []
    from_ = tree.args.get("from_")
    if isinstance(from_, exp.From):
        relations.append((from_.this, None))
        tree.set("from_", None)
    using = tree.args.get("using")
    if isinstance(tree, exp.Delete) and isinstance(using, list):
        relations.extend((u, None) for u in using)
        tree.set("using", None)
    return relations


def _conflict_edges(
    conflict: exp.OnConflict, table: TableName, edges: set[ColumnEdge], walk: _Walk
) -> set[ColumnEdge]:
    """The edges of an INSERT's ``ON CONFLICT ... DO UPDATE SET c = EXCLUDED.x`` (Postgres) or ``ON
    DUPLICATE KEY UPDATE c = VALUES(x)`` (MySQL): ``c`` takes what the INSERT puts into ``x``. The
    target's own columns are no source; any other reference is lineage lost (said in ``walk``)."""
    added: set[ColumnEdge] = set()
    for item in conflict.expressions or []:
        if not isinstance(item, exp.EQ) or not isinstance(item.this, exp.Column):
            walk.lost.append("an ON CONFLICT/DUPLICATE KEY UPDATE item not traced")
            continue
        value = item.expression
        target = (*table, item.this.name.lower())
        how = Transformation.IDENTITY
        if not (isinstance(value, exp.Column) or _is_values_call(value)):
            how = Transformation.TRANSFORMATION
        for node in value.walk(prune=lambda n: _is_values_call(n) or isinstance(n, exp.Query)):
            column = None
            if _is_values_call(node):
                column = node.expressions[0].name.lower() if node.expressions else None
            elif isinstance(node, exp.Column) and node.table.lower() == "excluded":
                column = node.name.lower()
            elif isinstance(node, exp.Column) and node.table.lower() in ("", table[2]):
                continue  # the row's own value
            elif not isinstance(node, exp.Query | exp.Column):
                continue
            if column is None:
                walk.lost.append("an ON CONFLICT/DUPLICATE KEY UPDATE item not traced")
                break
            inserted = (*table, column)
            added.update(
                ColumnEdge(e.source, target, _combine(how, e.transformation))
                for e in edges
                if e.target == inserted
            )
    return added


def _is_values_call(node: exp.Expr) -> bool:
    """MySQL's ``VALUES(col)`` in ``ON DUPLICATE KEY UPDATE``: the value the INSERT gave ``col``."""
    return isinstance(node, exp.Anonymous) and str(node.this).upper() == "VALUES"


class _Target(NamedTuple):
    """What a statement writes: its ``query``, the ``table`` (None for a SELECT) and the table's
    ``columns`` in the order the query fills them (None: the query's own names); ``lost``: why its
    column edges cannot be known; ``note``: why they are known but the statement is not resolved;
    ``unnamed``: 1 when the target has no database."""

    query: exp.Expr
    table: TableName | None
    columns: list[str] | None
    lost: str = ""
    note: str = ""
    unnamed: int = 0


def _statements(sql: str, reader: sqlglot.Dialect) -> list[exp.Expr]:
    """The statements of ``sql``: a ``;`` with nothing or a comment after it is no statement; MySQL's
    ``REPLACE [INTO] t ...`` (an INSERT that first deletes the rows of the same key; sqlglot keeps it
    as raw text) is read as the INSERT it is."""
    return [
        _replace_as_insert(tree, reader)
        for tree in reader.parse(sql, error_message_context=0)
        if tree is not None and not isinstance(tree, exp.Semicolon)
    ]


def _replace_as_insert(tree: exp.Expr, reader: sqlglot.Dialect) -> exp.Expr:
    """``REPLACE [LOW_PRIORITY | DELAYED] [INTO] t ...`` as ``INSERT INTO t ...`` (MySQL reference,
    "REPLACE Statement": the syntax of INSERT); any other statement as it is."""
    if not (isinstance(tree, exp.Command) and str(tree.this).upper() == "REPLACE"):
        return tree
    words = str(tree.expression.this if isinstance(tree.expression, exp.Literal) else "").split(None, 1)
    while words and words[0].upper() in ("LOW_PRIORITY", "DELAYED", "INTO"):
        words = words[1].split(None, 1) if len(words) > 1 else []
    if not words:
        return tree
    try:
        parsed = reader.parse("INSERT INTO " + " ".join(words), error_message_context=0)
    except SqlglotError:
        return tree
    return parsed[0] if len(parsed) == 1 and isinstance(parsed[0], exp.Insert) else tree


def _inserts(tree: exp.MultitableInserts) -> list[exp.Expr]:
    """Hive's ``FROM src INSERT OVERWRITE TABLE a SELECT ... INSERT INTO b SELECT ...`` as one
    ``INSERT ... SELECT ... FROM src`` per target."""
    inserts = []
    for insert in tree.expressions:
        query = insert.expression
        if isinstance(query, exp.Select) and not query.args.get("from_"):
            query.set("from_", exp.From(this=tree.args["source"].copy()))
        inserts.append(insert)
    return inserts


_SEVERITY = (Status.RESOLVED, Status.PARTIAL, Status.UNRESOLVED, Status.NOT_LINEAGE, Status.UNPARSED)


def _merge(parts: list[StatementLineage]) -> StatementLineage:
    """One lineage of several (a multi-table insert): the union of what each part reads and writes,
    the worst status."""
    worst = max(parts, key=lambda p: _SEVERITY.index(p.status))
    return StatementLineage(
        worst.kind,
        worst.status,
        "; ".join(dict.fromkeys(p.detail for p in parts if p.detail)),
        tuple(sorted({t for p in parts for t in p.reads})),
        tuple(sorted({t for p in parts for t in p.writes})),
        tuple(sorted({c for p in parts for c in p.columns_read})),
        tuple(sorted({e for p in parts for e in p.edges}, key=lambda e: (e.target, e.source))),
        tuple(sorted({e for p in parts for e in p.indirect}, key=_indirect_order)),
    )


def _indirect_order(edge: IndirectEdge) -> tuple[Any, ...]:
    return (edge.target or (), edge.subtype, edge.source)


def _body(query: exp.Expr) -> exp.Expr:
    """A statement's query without the parentheses around it (``AS (SELECT ...)``)."""
    while isinstance(query, exp.Subquery) and not query.alias:
        inner = query.this
        _lift_with(query, inner)
        query = inner
    return query


def _lift_with(statement: exp.Expr, query: exp.Expr) -> None:
    """Move the CTEs of ``WITH c AS (...) INSERT INTO t SELECT ... FROM c`` into the query that reads
    them (sqlglot keeps them on the INSERT), before the query's own."""
    outer = statement.args.get("with_")
    if not isinstance(outer, exp.With) or not isinstance(query, exp.Query):
        return
    inner = query.args.get("with_")
    if isinstance(inner, exp.With):
        inner.set("expressions", [*outer.expressions, *inner.expressions])
    else:
        query.set("with_", outer)
    statement.set("with_", None)


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


def _unresolved_reads(
    kind: str, walk: _Walk, writes: tuple[TableName, ...], unnamed_target: int
) -> StatementLineage | None:
    """The statement's result when what it reads or writes leaves no column lineage: only
    ``information_schema`` (and nothing written), a table not in the catalog, a table without a
    database; None otherwise. The tables it names are kept."""
    if (
        walk.reads
        and all(table[1] in _SYSTEM_DATABASES for table in walk.reads)
        and not writes
        and not unnamed_target
    ):
        return StatementLineage(kind, Status.NOT_LINEAGE, "reads only information_schema")
    problems = []
    if walk.missing_tables:
        problems.append("not in the catalog: " + ", ".join(_dotted(t) for t in sorted(walk.missing_tables)))
    if walk.unnamed_tables + unnamed_target:
        problems.append(f"{walk.unnamed_tables + unnamed_target} table(s) without a database (no default)")
    if not problems:
        return None
    return StatementLineage(
        kind, Status.UNRESOLVED, "; ".join(problems), reads=tuple(sorted(walk.reads)), writes=writes
    )


def _lineage(
    kind: str,
    walk: _Walk,
    writes: tuple[TableName, ...],
    edges: set[ColumnEdge],
    indirect: set[IndirectEdge],
) -> StatementLineage:
    """The lineage of an analysed statement: ``partial`` when a column reference was not resolved or
    some column lineage was lost."""
    problems = []
    if walk.unresolved_columns:
        # Counted, not named: a double-quoted "name" where a value belongs may be data (masking.py).
        problems.append(f"{len(walk.unresolved_columns)} column reference(s) not in the catalog")
    problems.extend(walk.lost)
    return StatementLineage(
        kind,
        Status.PARTIAL if problems else Status.RESOLVED,
        "; ".join(problems),
        tuple(sorted(walk.reads)),
        writes,
        tuple(sorted(walk.columns_read)),
        tuple(sorted(edges, key=lambda e: (e.target, e.source))),
        tuple(sorted(indirect, key=_indirect_order)),
    )


def _kind(tree: exp.Expr) -> str:
    if isinstance(tree, exp.Select) and isinstance(tree.args.get("into"), exp.Into):
        into = tree.args["into"]
        return "CTAS" if isinstance(into.this, exp.Table) else "OTHER"
    if isinstance(tree, exp.Query):
        return "SELECT"
    if isinstance(tree, exp.Insert | exp.MultitableInserts):
        return "INSERT"
    if isinstance(tree, exp.Update | exp.Delete | exp.Merge):
        return type(tree).__name__.upper()
    if isinstance(tree, exp.Create):
        kind = str(tree.args.get("kind") or "").upper()
        if kind == "VIEW":
            return "CREATE_VIEW"
        if kind == "TABLE" and isinstance(tree.expression, exp.Query):
            return "CTAS"
    return "OTHER"


def _source(scope: Scope | None, alias: str) -> exp.Table | Scope | None:
    """What ``alias`` names in ``scope``, or in a scope around it (a correlated reference)."""
    if not alias:
        return None
    while scope is not None:
        source = scope.sources.get(alias)
        if source is not None:
            return source
        scope = scope.parent
    return None


def _union(flows: list[_Flow]) -> _Flow:
    return _Flow(
        frozenset().union(*(f.direct for f in flows)),
        frozenset().union(*(f.indirect for f in flows)),
        any(f.lost for f in flows),
    )


def _output_names(scope: Scope) -> list[str]:
    """The output column names of a scope's query (a set operation: its first branch's)."""
    node = scope.expression
    while isinstance(node, exp.SetOperation):
        node = node.this
    if isinstance(node, exp.Subquery):
        node = node.unnest()
    if isinstance(node, exp.Select):
        return [p.alias_or_name.lower() for p in node.expressions]
    if isinstance(node, exp.Lateral) and isinstance(node.this, exp.Subquery):
        inner = node.this.unnest()
        if isinstance(inner, exp.Select):
            return [p.alias_or_name.lower() for p in inner.expressions]
    return []


def _column_roles(projection: exp.Expr) -> Iterator[tuple[exp.Expr, Indirect | None]]:
    """The columns and subqueries of ``projection``, each with its role: None when its value flows into
    the output (DIRECT), ``WINDOW`` in a window's PARTITION BY or ORDER BY, ``CONDITIONAL`` in a
    CASE/IF condition or an IN/EXISTS subquery."""
    stack: list[tuple[exp.Expr, Indirect | None]] = [(projection, None)]
    while stack:
        node, role = stack.pop()
        if isinstance(node, exp.Column):
            if not node.is_star:  # COUNT(*), COUNT(t.*): no column
                yield node, role
            continue
        if isinstance(node, exp.Subquery):
            yield node, role
            continue
        if isinstance(node, exp.Query):  # IN (SELECT ...), EXISTS (SELECT ...)
            yield node, role or Indirect.CONDITIONAL
            continue
        for key, value in node.args.items():
            children = value if isinstance(value, list) else [value]
            child_role = role
            if role is None and (
                (isinstance(node, exp.Window) and key in ("partition_by", "order"))
                or (isinstance(node, exp.If) and key == "this")
                or (isinstance(node, exp.Case) and key == "this")
                or (isinstance(node, exp.Filter) and key == "expression")
            ):
                child_role = Indirect.WINDOW if isinstance(node, exp.Window) else Indirect.CONDITIONAL
            stack.extend((child, child_role) for child in children if isinstance(child, exp.Expr))


def _how(projection: exp.Expr) -> Transformation:
    """IDENTITY for a bare (possibly renamed) column or scalar subquery, AGGREGATION when an aggregate
    function (not a window) computes it, TRANSFORMATION otherwise."""
    node = projection.unalias() if isinstance(projection, exp.Alias) else projection
    if isinstance(node, exp.Column | exp.Subquery):
        return Transformation.IDENTITY
    for agg in node.walk(prune=lambda n: isinstance(n, exp.Query | exp.Subquery)):
        if isinstance(agg, exp.AggFunc) and not isinstance(agg.parent, exp.Window):
            return Transformation.AGGREGATION
    return Transformation.TRANSFORMATION


def _is_alias_reference(scope: Scope, column: exp.Column) -> bool:
    """An unqualified name outside the projections that names one of them (``ORDER BY total``)."""
    if column.table:
        return False
    select = scope.expression
    if isinstance(select, exp.SetOperation):  # ... UNION ... ORDER BY an output
        return column.name.lower() in _output_names(scope)
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
