"""A client of the Tableau Metadata API (GraphQL) over a signed-in ``TableauSession``.

It reads whole ``...Connection`` fields page by page, as Tableau documents paging and its errors
(Tableau Metadata API documentation, help.tableau.com/current/api/metadata_api/en-us/: "Example
Queries" (Pagination), "Common Errors"): docs/metadata-lineage.md ("Tableau: the Metadata API").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.retries import Backoff, retrying
from tasks.tableau.session import TableauSession

logger = logging.getLogger(__name__)

#: "The maximum page size using either method is 1,000 items" ("Example Queries", Pagination).
MAX_PAGE_SIZE = 1000
ENABLE_HINT = (
    "the Metadata API is disabled on this Tableau Server: a server administrator enables it with "
    "'tsm maintenance metadata-services enable' (Tableau Metadata API, \"Get Started\"); Tableau Cloud "
    "always has it"
)


class MetadataApiError(RuntimeError):
    """The Metadata API refused every query (disabled, access denied): nothing could be read."""


@dataclass
class PagedResult:
    """All nodes read of one connection field; ``complete`` False when some could not be read (then
    ``problems`` says why)."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems


class MetadataApiClient:
    """Reads ``...Connection`` fields of the Metadata API through ``session.server.metadata.query``.

    Args:
        session: a signed-in session (the same credential token as the REST calls; 401002 → re-sign-in).
        page_size: ``first`` of the first page, 1 to 1000.
        retries: how often a page that hit ``TIME_LIMIT_EXCEEDED`` or ``RATE_EXCEEDED`` is asked for again.
        backoff_seconds: the first wait before such a retry, in seconds; it doubles up to
            ``max_backoff_seconds``, each wait drawn in [0.5, 1] × that (``pipelines.retries.Backoff``,
            jitter "half").
        sleep: the wait (tests pass a fake clock).

    Paging: cursor paging, ``first``/``after`` with a stable ``orderBy: {field: ID, direction: ASC}``. On
    ``NODE_LIMIT_EXCEEDED`` the page's partial data is dropped and it is asked for again with half the
    page size; on ``TIME_LIMIT_EXCEEDED`` or ``RATE_EXCEEDED`` after a back-off. Nothing is silently
    truncated: what cannot be read is named in the result's ``problems``.
    """

    def __init__(
        self,
        session: TableauSession,
        page_size: int = 100,
        retries: int = 5,
        backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(
                f"page_size must be 1 to {MAX_PAGE_SIZE} (Metadata API maximum), got {page_size}"
            )
        self.session = session
        self.page_size = page_size
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.sleep = sleep
        self.queries = 0

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """One GraphQL request (``server.metadata.query``); its JSON result."""
        self.queries += 1
        server = self.session.server
        return self.session.call(server.metadata.query, query, variables)

    def connection(
        self, name: str, selection: str, filter: tuple[str, dict[str, Any]] | None = None
    ) -> PagedResult:
        """Every node of the connection field ``name`` (e.g. ``publishedDatasourcesConnection``), with
        ``selection`` the fields of each node (``"id name upstreamTables { id }"``).

        ``filter``: the field's ``filter`` argument as ``(input type, value)``, e.g.
        ``("DatabaseTable_Filter", {"nameWithin": ["orders"]})``, sent as a variable with every page.

        Raises ``MetadataApiError`` for FEATURE_DISABLED (saying how to enable it) and ACCESS_DENIED.
        """
        declared, argument, variables = "", "", {}
        if filter is not None:
            declared, argument = f", $filter: {filter[0]}", "filter: $filter, "
            variables = {"filter": filter[1]}
        query = (
            f"query page($first: Int, $after: String{declared}) {{ {name}({argument}first: $first, "
            f"after: $after, orderBy: {{field: ID, direction: ASC}}) {{ nodes {{ {selection} }} "
            f"pageInfo {{ hasNextPage endCursor }} }} }}"
        )
        result = PagedResult()
        size, after = self.page_size, None

        def ask() -> tuple[dict[str, Any], list[str]]:
            """One page (its answer and error codes), asked for with half the size on NODE_LIMIT_EXCEEDED
            until the size is 1."""
            nonlocal size
            while True:
                answer = self.query(query, {**variables, "first": size, "after": after})
                errors = answer.get("errors") or []
                codes = [((e.get("extensions") or {}).get("code") or "UNKNOWN") for e in errors]
                self._raise_if_refused(codes, errors)
                if "NODE_LIMIT_EXCEEDED" not in codes or size == 1:
                    return answer, codes
                size = max(1, size // 2)
                logger.info("Metadata API %s: NODE_LIMIT_EXCEEDED; page size now %d", name, size)

        # TIME_LIMIT_EXCEEDED / RATE_EXCEEDED: the page again after a back-off, ``retries`` times a page.
        backing_off = retrying(
            Backoff(self.backoff_seconds, self.max_backoff_seconds, jitter="half"),
            again=lambda paged: _throttled(paged[1]) is not None,
            retries=self.retries,
            before_sleep=lambda paged, wait: logger.info(
                "Metadata API %s: %s; retrying in %.1f s", name, _throttled(paged[1]), wait
            ),
            sleep=self.sleep,
        )
        while True:
            answer, codes = backing_off(ask)
            errors = answer.get("errors") or []
            if "NODE_LIMIT_EXCEEDED" in codes:
                result.problems.append(f"{name}: NODE_LIMIT_EXCEEDED with one node per page")
                return result
            if code := _throttled(codes):
                result.problems.append(f"{name}: {code} after {self.retries} retries")
                return result
            data = (answer.get("data") or {}).get(name)
            if errors or data is None:
                described = "; ".join(f"{c}: {e.get('message')}" for c, e in zip(codes, errors, strict=True))
                result.problems.append(f"{name}: {described or 'no data in the answer'}")
                if data is None:
                    return result
            result.nodes.extend(data["nodes"])
            page = data["pageInfo"]
            if not page["hasNextPage"]:
                return result
            after = page["endCursor"]

    @staticmethod
    def _raise_if_refused(codes: list[str], errors: list[dict[str, Any]]) -> None:
        if "FEATURE_DISABLED" in codes:
            raise MetadataApiError(f"Tableau Metadata API: {ENABLE_HINT}")
        if "ACCESS_DENIED" in codes or "SITE_DISABLED" in codes:
            message = next(
                e.get("message")
                for c, e in zip(codes, errors, strict=True)
                if c in ("ACCESS_DENIED", "SITE_DISABLED")
            )
            raise MetadataApiError(
                f"Tableau Metadata API refused the query ({message}); the PAT's user needs a site role that "
                "may query it (Site Administrator Explorer reads the whole site's lineage)"
            )


def _throttled(codes: list[str]) -> str | None:
    """The code of an answer to ask for again after a back-off (page size aside), or None."""
    if "NODE_LIMIT_EXCEEDED" in codes:
        return None
    if "TIME_LIMIT_EXCEEDED" in codes:
        return "TIME_LIMIT_EXCEEDED"
    return "RATE_EXCEEDED" if "RATE_EXCEEDED" in codes else None
