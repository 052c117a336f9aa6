"""Filtering and pagination of list endpoints.

Source: Tableau REST API, "Filtering and Sorting" (`filter=field:operator:value`, clauses joined by
commas are ANDed, `in` takes `[a,b]`) and "Paginating Results" (`pageSize` 1-1000, default 100;
`pageNumber` from 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from devstack.tableau import errors

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    """The `<pagination pageNumber pageSize totalAvailable/>` of a list response."""

    number: int
    size: int
    total: int


def select(
    items: Sequence[T], params: Mapping[str, str], fields: Mapping[str, Callable[[T], str]]
) -> tuple[list[T], Page]:
    """The items matching `params["filter"]` on the page `params` asks for.

    `fields` maps the filterable field names of the endpoint to accessors; other fields, operators
    other than `eq` and `in`, and malformed clauses are 400000. A page past the last is 400006.
    """
    predicates = [_clause(clause, fields) for clause in _split(params.get("filter", ""))]
    matching = [item for item in items if all(p(item) for p in predicates)]
    size = _int(params.get("pageSize", str(DEFAULT_PAGE_SIZE)), 1, MAX_PAGE_SIZE, errors.invalid_page_size)
    number = _int(params.get("pageNumber", "1"), 1, math.inf, errors.invalid_page_number)
    if number > max(1, math.ceil(len(matching) / size)):
        raise errors.invalid_page_number(str(number))
    start = (number - 1) * size
    return matching[start : start + size], Page(number, size, len(matching))


def _split(expression: str) -> list[str]:
    """Split on the commas that separate clauses, not those inside an `in` list's brackets."""
    clauses, depth, current = [], 0, ""
    for char in expression:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            clauses.append(current)
            current = ""
        else:
            current += char
    return [*clauses, current] if expression else []


def _clause(clause: str, fields: Mapping[str, Callable[[T], str]]) -> Callable[[T], bool]:
    field, _, rest = clause.partition(":")
    operator, _, value = rest.partition(":")
    if field not in fields:
        raise errors.bad_request(
            f"Invalid filter field '{field}'; this endpoint filters on {sorted(fields)}."
        )
    get = fields[field]
    if operator == "eq":
        return lambda item: get(item) == value
    if operator == "in" and value.startswith("[") and value.endswith("]"):
        values = set(value[1:-1].split(","))
        return lambda item: get(item) in values
    raise errors.bad_request(f"Invalid filter expression '{clause}'; supported operators: eq, in:[a,b].")


def _int(text: str, low: float, high: float, error: Callable[[str], errors.ApiError]) -> int:
    try:
        value = int(text)
    except ValueError:
        raise error(text) from None
    if not low <= value <= high:
        raise error(text)
    return value
