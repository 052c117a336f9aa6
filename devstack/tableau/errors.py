"""The Tableau REST API errors the stand-in answers with: HTTP status, six-digit code, summary, detail.

Source: Tableau REST API reference, "Handling Errors in the REST API" and the error table of each
method; where the reference does not name a code, the choice is marked "stand-in choice".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class ApiError(Exception):
    """An error response: `<error code><summary/><detail/></error>` with HTTP `status`."""

    status: int
    code: str
    summary: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.summary}: {self.detail}"


def bad_request(detail: str) -> ApiError:
    """400000: the request body is missing, incomplete or malformed, or a query parameter is invalid."""
    return ApiError(400, "400000", "Bad Request", detail)


def invalid_page_number(value: str) -> ApiError:
    """400006: page number not an integer, below 1, or past the last page (Query Data Sources et al.).
    tableauserverclient's QuerySet stops paging on this code."""
    return ApiError(400, "400006", "Invalid page number", f"The page number '{value}' is not valid.")


def invalid_page_size(value: str) -> ApiError:
    """400007: page size not an integer between 1 and 1000 ("Paginating Results")."""
    return ApiError(400, "400007", "Invalid page size", f"The page size '{value}' is not valid (1 to 1000).")


def sign_in_failed() -> ApiError:
    """401001 (Sign In): wrong, expired or revoked credentials, or an unknown site contentUrl."""
    return ApiError(401, "401001", "Signin Error", "Error signing in to Tableau Server")


def jwt_sign_in_failed(connected_app_code: int) -> ApiError:
    """401001 for a JWT Tableau does not accept: the detail carries the connected-app error number of
    "Troubleshoot Connected Apps" (5 SYSTEM_USER_NOT_FOUND, 16 LOGIN_FAILED, 126 CONNECTED_APP_NOT_FOUND,
    127 CONNECTED_APP_SECRET_NOT_FOUND, 10083 BAD_JWT, 10084 JWT_PARSE_ERROR), as Tableau's sign-in
    answer shows it: "Error signing in to Tableau Server (16)" (tableau/tableau_langchain #96)."""
    return ApiError(
        401, "401001", "Signin Error", f"Error signing in to Tableau Server ({connected_app_code})"
    )


def unauthorized() -> ApiError:
    """401002: the X-Tableau-Auth token is missing, unknown, signed out, expired, or ended because its
    personal access token signed in again; also a JWT session's request its scopes do not cover
    (tableau/server-client-python #1320, #1581). Tableau answers all of these alike."""
    return ApiError(401, "401002", "Unauthorized Access", "Invalid authentication credentials were provided.")


def site_not_found(site: str) -> ApiError:
    """404000: the site id in the URI is not the session's site (every site-scoped method's table:
    "Site not found: the site ID in the URI is unknown"; the stand-in hosts one site)."""
    return ApiError(404, "404000", "Site Not Found", f"Site '{site}' could not be found.")


def job_not_found(job_id: str) -> ApiError:
    """404000 for an unknown job id (Query Job, Cancel Job). Stand-in choice: the reference's
    job-specific 404 code could not be confirmed; clients should rely on HTTP 404."""
    return ApiError(404, "404000", "Resource Not Found", f"Job '{job_id}' could not be found.")


def datasource_not_found(content: str) -> ApiError:
    """404011: the data source id in the URI does not exist (Query Data Source, Update Data Source Now)."""
    return ApiError(404, "404011", "Resource Not Found", f"Datasource '{content}' could not be found.")


def workbook_not_found(content: str) -> ApiError:
    """404006: the workbook id in the URI does not exist (Query Workbook, Update Workbook Now)."""
    return ApiError(404, "404006", "Resource Not Found", f"Workbook '{content}' could not be found.")


def unknown_resource(path: str) -> ApiError:
    """404003: no such endpoint (tableauserverclient reads 404003 on serverInfo as "endpoint not found")."""
    return ApiError(404, "404003", "Resource Not Found", f"Unknown resource '{path}' specified in URI.")


def method_not_allowed(method: str) -> ApiError:
    """405000: the endpoint exists but not for this HTTP method."""
    return ApiError(405, "405000", "Invalid request method", f"Request type '{method}' is not allowed.")


def refresh_already_queued(name: str) -> ApiError:
    """409093: a refresh of this content is already queued or running. The text is the one Tableau
    Server sends (tableau/server-client-python issue #1090)."""
    return ApiError(
        409, "409093", "Resource Conflict", f"Job for '{name}' is already queued. Not queuing a duplicate."
    )


def job_already_finished(job_id: str, finish_code: int) -> ApiError:
    """409000 for cancelling a job that has finished. Stand-in choice: the reference documents no code."""
    return ApiError(
        409,
        "409000",
        "Conflict",
        f"Job '{job_id}' has already finished (finishCode {finish_code}); it cannot be cancelled.",
    )


_UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600}


def too_many_refreshes(retry_after_seconds: int, unit: str = "seconds", header: bool = True) -> ApiError:
    """429000: too many extract-refresh requests, worded as Tableau Cloud words it: "Too many requests
    for 'api.rest.refresh_extracts'. Please retry after 29 minutes." (tableau/server-client-python #952),
    the wait rounded up to whole `unit`s. Whether Tableau adds a Retry-After header is not documented:
    with `header` the stand-in adds one in seconds (RFC 9110), without it only the text says when."""
    amount = -(-retry_after_seconds // _UNIT_SECONDS[unit])
    worded = unit if amount != 1 else unit.rstrip("s")
    return ApiError(
        429,
        "429000",
        "Too Many Requests",
        f"Too many requests for 'api.rest.refresh_extracts'. Please retry after {amount} {worded}.",
        {"Retry-After": str(retry_after_seconds)} if header else {},
    )


def internal_error() -> ApiError:
    """500000: an unexpected failure of the stand-in itself."""
    return ApiError(500, "500000", "Internal Server Error", "The stand-in failed; see its log.")
