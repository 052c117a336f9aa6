"""Shaping BigQuery's flattened user rows into the nested records a CRM takes (docs/crm-export.md,
"Rows → records"): ``UserShaper`` in one pass, and the general steps ``unflatten``, ``merge_unions``
and ``drop_nulls`` it falls back on for rows holding nested objects.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from pipelines.crm_export.settings import PipelineSettings


class MalformedRowError(ValueError):
    """A row that cannot become a CRM record; its message is the dead-letter reason."""


def unflatten(row: Mapping[str, Any], separator: str) -> dict[str, Any]:
    """Rebuild nested objects from flattened names: ``{"a.b": 1}`` → ``{"a": {"b": 1}}``.

    Values that are already objects (BigQuery's ``RECORD`` columns read as dicts) are merged in.
    Raises ``MalformedRowError`` when a name is both a value and an object (``a`` and ``a.b``).
    """
    out: dict[str, Any] = {}
    for name, value in row.items():
        parts = name.split(separator) if separator else [name]
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise MalformedRowError(
                    f"column {name!r}: {separator.join(parts[: i + 1])!r} is also a value"
                )
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping):
            existing = node.setdefault(leaf, {})
            if not isinstance(existing, dict):
                raise MalformedRowError(f"column {name!r} is both a value and an object")
            existing.update(unflatten(value, separator))
        elif leaf in node and isinstance(node[leaf], dict):
            raise MalformedRowError(f"column {name!r} is both a value and an object")
        else:
            node[leaf] = value
    return out


def merge_unions(obj: dict[str, Any], union_fields: Collection[str], path: str = "") -> Any:
    """Collapse every object whose keys are all union value columns into its one non-null value.

    ``{"plan": {"string_value": "pro", "int_value": None}}`` → ``{"plan": "pro"}``; all null → ``None``.
    Raises ``MalformedRowError`` naming the property when two typed columns are set.
    """
    if obj and all(key in union_fields for key in obj):
        present = [(key, value) for key, value in obj.items() if value is not None]
        if len(present) > 1:
            raise MalformedRowError(
                f"property {path!r} has {len(present)} typed values ({', '.join(k for k, _ in present)}); "
                "a union holds one"
            )
        return present[0][1] if present else None
    for key, value in obj.items():
        if isinstance(value, dict):
            obj[key] = merge_unions(value, union_fields, f"{path}.{key}" if path else key)
    return obj


def drop_nulls(obj: dict[str, Any], keep_null: Collection[str], path: str = "") -> dict[str, Any]:
    """Remove null values (and objects left empty), except at the dotted paths in ``keep_null``.

    A CRM upsert overwrites a field with whatever it is sent: a null would erase a known value, so
    only the fields listed in ``keep_null`` are sent as null (to clear them on purpose).
    """
    out: dict[str, Any] = {}
    for key, value in obj.items():
        dotted = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            value = drop_nulls(value, keep_null, dotted)
            if not value and dotted not in keep_null:
                continue
        elif value is None and dotted not in keep_null:
            continue
        out[key] = value
    return out


class UserShaper:
    """One flattened BigQuery row → one CRM record (nested, unions merged, nulls dropped), fast.

    What ``merge_unions(unflatten(row))`` followed by ``drop_nulls`` gives, in one pass over the row
    with each column name parsed once and cached (a weekly export has tens of millions of rows with
    the same few dozen columns). One difference, on purpose: a typed union column next to a plain
    sub-field of the same property (``p.string_value`` and ``p.tier``) is an error here, where the
    general steps would keep ``p`` as an object. Rows holding nested objects take the general path.
    ``__call__`` raises ``MalformedRowError`` if the row is not an object, lacks a non-empty string
    ``key_field``, has two typed values in one union, or names a field both as value and object.

    Each column layout (the row's column names, in order) is compiled once into a function of straight
    code (``compile_layout``), which shapes a row in about half the loop's time; a row it cannot
    shape as the loop would (a nested object, two typed values, no key) takes the loop, which names the
    fault. Layouts with nulls to send (``send_nulls``, ``keep_null``) always take the loop.
    """

    #: Column layouts compiled per shaper at most (rows of a shard share one or a few).
    MAX_LAYOUTS = 64

    def __init__(self, settings: PipelineSettings):
        self.key_field = settings.key_field
        self.separator = settings.flat_separator
        self.union_fields = frozenset(settings.union_fields)
        self.drop_null_values = not settings.send_nulls
        self.keep_null = frozenset(settings.keep_null)
        self._columns: dict[str, tuple[tuple[str, ...], str, bool, bool]] = {}
        self._layouts: dict[tuple[str, ...], Callable[[dict[str, Any]], dict[str, Any] | None] | None] = {}

    def _column(self, name: str) -> tuple[tuple[str, ...], str, bool, bool]:
        """(parent path, leaf name, is a union column, a null here is sent) for a column name; cached."""
        spec = self._columns.get(name)
        if spec is None:
            parts = tuple(name.split(self.separator)) if self.separator else (name,)
            is_union = len(parts) > 1 and parts[-1] in self.union_fields
            path = parts[:-1] if is_union else parts
            send_null = not self.drop_null_values or ".".join(path) in self.keep_null
            spec = self._columns[name] = (path[:-1], path[-1], is_union, send_null)
        return spec

    def __call__(self, row: Any) -> dict[str, Any]:
        if type(row) is dict:
            layout = tuple(row)
            try:
                shape = self._layouts[layout]
            except KeyError:
                shape = self._compile(layout)
            if shape is not None:
                record = shape(row)
                if record is not None:
                    return record
        return self._shape(row)

    def _compile(self, layout: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any] | None] | None:
        """The compiled shaper of ``layout`` (None: rows of this layout take the loop), cached."""
        if len(self._layouts) >= self.MAX_LAYOUTS:
            return None
        specs = [self._column(name) for name in layout]
        shape = None
        if not any(spec[3] for spec in specs):
            shape = compile_layout([spec[:3] for spec in specs], self.key_field)
        self._layouts[layout] = shape
        return shape

    def _shape(self, row: Any) -> dict[str, Any]:
        """``__call__``'s loop: any row, each fault named."""
        if not isinstance(row, Mapping):
            raise MalformedRowError(f"row is a {type(row).__name__}, not an object")
        columns = self._columns
        out: dict[str, Any] = {}
        nulls: list[tuple[tuple[str, ...], str]] = []
        for name, value in row.items():
            spec = columns.get(name) or self._column(name)
            if value is None:
                if spec[3]:
                    nulls.append((spec[0], spec[1]))
                continue
            if isinstance(value, dict):  # a RECORD column read as an object (no ABC check: hot loop)
                return self._general(row)
            node = out
            for part in spec[0]:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                elif not isinstance(child, dict):
                    raise MalformedRowError(f"column {name!r}: {part!r} is also a value")
                node = child
            leaf = spec[1]
            if leaf in node:
                if spec[2] and not isinstance(node[leaf], dict):
                    raise MalformedRowError(
                        f"property {'.'.join((*spec[0], leaf))!r} has two typed values; a union holds one"
                    )
                raise MalformedRowError(f"column {name!r} is both a value and an object")
            node[leaf] = value
        for parents, leaf in nulls:
            node = out
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise MalformedRowError(f"field {'.'.join((*parents, leaf))!r}: {part!r} is also a value")
            node.setdefault(leaf, None)
        return self._keyed(out)

    def _general(self, row: Mapping[str, Any]) -> dict[str, Any]:
        record = merge_unions(unflatten(row, self.separator), self.union_fields)
        if self.drop_null_values:
            record = drop_nulls(record, self.keep_null)
        return self._keyed(record)

    def _keyed(self, record: dict[str, Any]) -> dict[str, Any]:
        key = record.get(self.key_field)
        if not isinstance(key, str) or not key:
            raise MalformedRowError(f"row has no {self.key_field!r} (the CRM's record key)")
        return record


def compile_layout(
    columns: Sequence[tuple[tuple[str, ...], str, bool]], key_field: str
) -> Callable[[dict[str, Any]], dict[str, Any] | None] | None:
    """Compile the shaping of one column layout into a function of straight code.

    ``columns``: per column, in the row's order, (parent path, leaf name, is a union column), as
    ``UserShaper`` parses the names. The function takes a ``dict`` with exactly these columns in this
    order and returns the record ``UserShaper``'s loop would give (same keys, same order), or None
    where the loop would do more than drop nulls and nest: a nested object among the values, two typed
    values in one union, no non-empty string key. Returns None (nothing compiled) for a layout without
    a top-level ``key_field`` column or with names that nest into one another (``a`` and ``a.b``).
    """
    paths: dict[tuple[str, ...], bool] = {}  # each field's full path → it is a union's
    for parents, leaf, is_union in columns:
        path = (*parents, leaf)
        if path in paths and not (is_union and paths[path]):
            return None
        paths[path] = is_union
    if any(path[:i] in paths for path in paths for i in range(1, len(path))):
        return None
    if ((), key_field, False) not in columns:
        return None
    nodes = {(): "out"}  # parent path → the variable holding that object, once made
    for parents, _, _ in columns:
        for i in range(1, len(parents) + 1):
            nodes.setdefault(parents[:i], f"n{len(nodes)}")
    key = columns.index(((), key_field, False))
    values = ", ".join(f"v{i}" for i in range(len(columns)))
    lines = [
        "def shape(row):",
        f"    ({values},) = row.values()",
        f"    if v{key}.__class__ is not str or not v{key}:",
        "        return None",
        "    out = {}",
        *(f"    {name} = None" for path, name in nodes.items() if path),
    ]
    union_seen: set[tuple[str, ...]] = set()
    for i, (parents, leaf, is_union) in enumerate(columns):
        if i == key:  # a non-empty string, checked above
            lines.append(f"    out[{leaf!r}] = v{i}")
            continue
        lines += [
            f"    if v{i} is not None:",
            f"        if isinstance(v{i}, dict):",
            "            return None",
        ]
        for depth in range(1, len(parents) + 1):
            parent, node = nodes[parents[: depth - 1]], nodes[parents[:depth]]
            lines.append(f"        if {node} is None:")
            lines.append(f"            {node} = {parent}[{parents[depth - 1]!r}] = {{}}")
        node = nodes[parents]
        if is_union and (*parents, leaf) in union_seen:
            lines += [f"        if {leaf!r} in {node}:", "            return None"]
        union_seen.add((*parents, leaf))
        lines.append(f"        {node}[{leaf!r}] = v{i}")
    lines.append("    return out")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<UserShaper layout>", "exec"), namespace)  # code generated above
    return namespace["shape"]
