"""Configuration files read strictly: YAML whose duplicate keys are errors, validated by a pydantic
model, with one error type per file naming the file, the line, the key path, what was expected and
the fix::

    document = load_yaml_mapping(path, what="Domain configuration file", error=DomainConfigError)
    parsed = document.validate(DomainsFile)

Not in ``tasks/common.py``: this needs only PyYAML and pydantic and imports nothing of the project,
so both configuration modules (and ``deployments.domains`` through them) import it without a cycle,
and without ``tasks/common.py``'s Prefect run-time concerns.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from yaml.nodes import MappingNode, Node, SequenceNode

M = TypeVar("M", bound=BaseModel)
#: A key path into a document: mapping keys and list indexes, e.g. ("domains", "sales", "datasources", 1).
KeyPath = tuple[Any, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigFileError(ValueError):
    """A configuration file is missing, unreadable, not YAML, or not valid. Each configuration module
    raises its own subclass (``DomainConfigError``, ``SourceConfigError``)."""


def name_key(pattern: str, what: str, rule: str) -> Any:
    """The type of a key that names something (a domain, a source): a ``str`` matching ``pattern``,
    refused with ``"<what> '<key>' is not valid: <rule>"``, for a ``dict[<type>, …]`` field."""

    def check(name: str) -> str:
        if not re.fullmatch(pattern, name):
            raise ValueError(f"{what} {name!r} is not valid: {rule}")
        return name

    return Annotated[str, AfterValidator(check)]


class StrictModel(BaseModel):
    """Base of the models of a configuration file: unknown keys are refused (``extra="forbid"``), values
    are frozen, and a ``ValidationError`` printed as it is never quotes the input (a URL's password; the
    file's own errors are built from ``errors()``). ``refused_keys`` maps a key the model does not take to
    the reason and the fix, said instead of the generic "unknown key" (e.g. ``name`` in an entry keyed by
    its name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    refused_keys: ClassVar[Mapping[str, str]] = {}


class ConfigMapping(dict):
    """The top-level mapping of a configuration file (plain ``dict``/``list`` values inside), with what
    its errors need: ``file``, ``what`` (e.g. "Domain configuration file"), ``error_type``, and the
    line of every key and list item (``line_of``)."""

    def __init__(
        self,
        data: Mapping[Any, Any],
        *,
        file: Path,
        what: str,
        error_type: type[ConfigFileError],
        lines: Mapping[KeyPath, int],
    ) -> None:
        super().__init__(data)
        self.file = file
        self.what = what
        self.error_type = error_type
        self.lines = dict(lines)

    def line_of(self, path: KeyPath) -> int:
        """The line (1-based) of the key or item at ``path``, else of its nearest ancestor found; 1 if none."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def validate(self, model: type[M]) -> M:
        """The document validated by ``model``.

        Raises:
            ConfigFileError (``error_type``): every problem pydantic found, each with its line and key path.
        """
        try:
            return model.model_validate(self)
        except ValidationError as exc:
            raise self.validation_error(exc, model) from None

    def validation_error(
        self, exc: ValidationError, model: type[BaseModel], at: KeyPath = ()
    ) -> ConfigFileError:
        """``exc``, raised by ``model`` validating the part of the document at ``at``, as one ``error_type``."""
        problems = [_problem(error, model, at, self) for error in exc.errors(include_url=False)]
        problems.sort(key=lambda problem: problem[0])  # in the file's order
        return self.error_type(self._message(problems))

    def _message(self, problems: Sequence[tuple[int, KeyPath, str]]) -> str:
        if len(problems) == 1:
            return f"{self.what} {self.file}, {_where(*problems[0][:2])}: {problems[0][2]}"
        lines = "".join(f"\n- {_where(line, path)}: {problem}" for line, path, problem in problems)
        return f"{self.what} {self.file} has {len(problems)} problems:{lines}"


def load_yaml_mapping(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: type[ConfigFileError] = ConfigFileError,
    missing_hint: str = "",
) -> ConfigMapping:
    """Read the YAML file at ``path``, whose top level must be a mapping (an empty file is an empty one).

    Args:
        path: the file.
        what: what the file is, to start every message, e.g. ``"Domain configuration file"``.
        error: the error type raised (the configuration module's own ``ConfigFileError`` subclass).
        missing_hint: how to fix a missing file, e.g. ``"create it or set TABLEAU_DOMAINS_FILE"``.

    Returns:
        The mapping, plain YAML values inside (``SafeLoader``'s types), with the line of each key.

    Raises:
        ConfigFileError (``error``): the file does not exist or cannot be read, is not YAML (line and
            column of the problem), holds a key twice in one mapping (both lines; YAML loaders would
            silently keep the last), or its top level is not a mapping.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(
            f"{what} {file} does not exist: {missing_hint or 'create it, or fix the path'}."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"{what} {file} cannot be read ({reason}): it must be a UTF-8 text file.") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        if node is not None:
            _index(loader, node, (), lines, set(), file, what, error)
        data = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        raise error(f"{what} {file}, {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {file} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        line = node.start_mark.line + 1 if node is not None else 1
        raise error(
            f"{what} {file}, line {line}: expected a mapping (key: value lines) at the top level, "
            f"got {describe(data)}."
        )
    return ConfigMapping(data, file=file, what=what, error_type=error, lines=lines)


def key_path(path: Iterable[Any]) -> str:
    """``("domains", "sales", "datasources", 1, "project")`` → ``domains.sales.datasources[1].project``."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def describe(value: Any) -> str:
    """A YAML value as an error message names it: ``a mapping``, ``a list``, ``null``, ``'text'``, ``3``."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    return f"{type(value).__name__} {str(value)[:60]!r}"


# --- YAML: duplicate keys and lines ---------------------------------------------------------------


def _index(
    loader: yaml.SafeLoader,
    node: Node,
    path: KeyPath,
    lines: dict[KeyPath, int],
    visited: set[int],
    file: Path,
    what: str,
    error: type[ConfigFileError],
) -> None:
    """Record the line of every key and item under ``node`` (at ``path``); refuse a key given twice."""
    if id(node) in visited:  # an alias: its keys were checked where its anchor is (a deeper error is
        return  # then placed at the alias's line); this also ends recursive and exponential aliases
    visited.add(id(node))
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(loader, item, path + (i,), lines, visited, file, what, error)
        return
    if not isinstance(node, MappingNode):
        return
    seen: dict[Any, int] = {}
    merged: list[Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:  # "<<: *anchor": the anchor's keys, which the mapping's own override
            merged += value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:  # a mapping or list as a key: the constructor says so, with its mark
            continue
        if first is not None:
            raise error(
                f"{what} {file}, {_where(line, path + (key,))}: duplicate key {key!r} (first at line {first}); "
                "YAML would silently keep only the last one. Remove one of them or merge them."
            )
        seen[key] = line
        lines[path + (key,)] = line
        _index(loader, value_node, path + (key,), lines, visited, file, what, error)
    for source in merged:
        if isinstance(source, MappingNode):
            for key_node, value_node in source.value:
                key = loader.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        continue
                except TypeError:
                    continue
                seen[key] = lines[path + (key,)] = key_node.start_mark.line + 1
                _index(loader, value_node, path + (key,), lines, visited, file, what, error)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    problem = exc.problem or "unexpected content"
    context = f" ({exc.context}" + (f" at line {exc.context_mark.line + 1})" if exc.context_mark else ")")
    return (
        f"{where}: not valid YAML: {problem}{context if exc.context else ''}. Fix the syntax there "
        "(indentation, a missing ':' or quotes around a value holding ': ' or '#')."
    )


def _where(line: int, path: KeyPath) -> str:
    return f"line {line}, {key_path(path)}" if path else f"line {line}"


# --- pydantic errors as problems at key paths ---------------------------------------------------------


def _problem(error: Mapping[str, Any], model: type[BaseModel], at: KeyPath, document: ConfigMapping) -> tuple:
    """(line, key path, message) of one pydantic error of ``model`` validating the document at ``at``."""
    loc = tuple(error["loc"])
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    path, target = _walk(model, loc)
    path = at + path
    if kind == "extra_forbidden":
        parent = _walk(model, loc[:-1])[1]
        key = loc[-1]
        refused = getattr(parent, "refused_keys", {}) if isinstance(parent, type) else {}
        if key in refused:
            return document.line_of(path), path, refused[key]
        expected = f"; expected one of: {', '.join(_keys(parent))}" if _keys(parent) else ""
        return (
            document.line_of(path),
            path,
            f"unknown key {key!r}{expected}. Remove it or correct its spelling.",
        )
    if kind == "missing":
        parent_path = path[:-1]
        field = _field(_walk(model, loc[:-1])[1], loc[-1])
        about = f" ({field.description.rstrip('.')})" if field is not None and field.description else ""
        return (
            document.line_of(parent_path),
            parent_path,
            f"required key {loc[-1]!r}{about} is missing: add it.",
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(ctx.get("discriminator", "kind")).strip("'")
        tags = ", ".join(_tags(target)) or str(ctx.get("expected_tags", "the documented ones"))
        if kind == "union_tag_not_found":
            return (
                document.line_of(path),
                path,
                f"required key {discriminator!r} is missing: add it, one of {tags}.",
            )
        path += (discriminator,)
        return document.line_of(path), path, f"{ctx.get('tag')!r} is not known: use one of {tags}."
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        keys = _keys(target)
        expected = f"a mapping with the keys {', '.join(keys)}" if keys else "a mapping (key: value lines)"
        return document.line_of(path), path, f"expected {expected}, got {describe(value)}."
    if loc and loc[-1] == "[key]" and kind not in ("value_error", "assertion_error"):
        message = f"the key {describe(value)} is not a name: write it as a string, e.g. '{value}'."
        return document.line_of(path), path, message
    if kind in ("value_error", "assertion_error"):
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return document.line_of(path), path, message if message.endswith(".") else message + "."
    if kind == "string_pattern_mismatch":
        return (
            document.line_of(path),
            path,
            f"expected text matching {ctx['pattern']}, got {describe(value)}.",
        )
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return document.line_of(path), path, f"expected a non-empty string, got {describe(value)}."
    return document.line_of(path), path, f"expected {_expected(str(error['msg']))}, got {describe(value)}."


_EXPECTED = {
    "a valid dictionary": "a mapping",
    "a valid string": "a string",
    "a valid list": "a list",
    "a valid tuple": "a list",
    "a valid boolean": "true or false",
    "a valid number": "a number",
    "a valid integer": "a whole number",
}


def _expected(msg: str) -> str:
    """pydantic's "Input should be a valid integer, unable to parse ..." as "a whole number"."""
    if msg.startswith("Input should be "):
        expected = msg.removeprefix("Input should be ")
        for prefix, plain in _EXPECTED.items():
            if expected.startswith(prefix):
                return plain
        return f"a number {expected}" if expected.startswith(("greater than", "less than")) else expected
    return msg[:1].lower() + msg[1:]


def _walk(model: type[BaseModel], loc: KeyPath) -> tuple[KeyPath, Any]:
    """The key path of pydantic's ``loc`` (without the tags of discriminated unions and ``[key]``) and
    the type found there (None when it cannot be told)."""
    path: list[Any] = []
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if part == "[key]":
            continue
        if _is_union(current):
            member = _tagged_member(current, part)
            if member is not None:  # a discriminated union's tag, e.g. "athena": not a key of the file
                current = member
                continue
            current = None
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _field(current, part)
            current = field.annotation if field is not None else None
        elif typing.get_origin(current) in (list, tuple, set, frozenset, Sequence):
            args = [a for a in typing.get_args(current) if a is not Ellipsis]
            current = args[0] if args else None
        elif typing.get_origin(current) in (dict, Mapping):
            current = typing.get_args(current)[1]
        else:
            current = None
        path.append(part)
    return tuple(path), _unwrap(current)


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` → X, ``X | None`` → X."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif _is_union(annotation) and type(None) in typing.get_args(annotation):
            others = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _members(union: Any) -> list[type[BaseModel]]:
    members = [_unwrap(a) for a in typing.get_args(union)] if _is_union(union) else []
    return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]


def _tagged_member(union: Any, tag: Any) -> type[BaseModel] | None:
    for member in _members(union):
        for field in member.model_fields.values():
            if typing.get_origin(field.annotation) is Literal and tag in typing.get_args(field.annotation):
                return member
    return None


def _tags(union: Any) -> list[str]:
    """The ``kind`` values of a discriminated union's members, e.g. ``["athena", "tableau"]``."""
    tags = []
    for member in _members(union):
        field = member.model_fields.get("kind")
        if field is not None and typing.get_origin(field.annotation) is Literal:
            tags += [str(tag) for tag in typing.get_args(field.annotation)]
    return tags


def _field(model: Any, name: Any) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(name, str):
        return model.model_fields.get(name)
    return None


def _keys(model: Any) -> list[str]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []
