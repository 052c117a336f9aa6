"""moto's server answering the Athena calls of the metadata collector as AWS does (``MotoGaps``).

``python -m devstack.moto_gaps -H HOST -p PORT`` serves moto's own WSGI application, as ``python -m
moto.server`` does, behind ``MotoGaps``; ``devstack.moto_server.MotoServer`` runs it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
#: ListQueryExecutions ``MaxResults``: 0-50, default 50 (Athena API reference).
LIST_QUERY_EXECUTIONS_MAX = 50
#: JSON-protocol codes of AWS for moto's XML ones (Athena and Glue API references, "Common Errors").
_JSON_CODES = {"AccessDenied": "AccessDeniedException", "InvalidClientTokenId": "UnrecognizedClientException"}
_XML_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Answer:
    """An HTTP answer: status code, headers, body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @classmethod
    def json(cls, status: int, document: dict[str, Any]) -> _Answer:
        headers = [("Content-Type", JSON_CONTENT_TYPE), ("x-amzn-RequestId", uuid.uuid4().hex)]
        return cls(status, headers, json.dumps(document, default=str).encode())

    @classmethod
    def error(cls, code: str, message: str) -> _Answer:
        """AWS's JSON-protocol error: HTTP 400, ``__type`` and ``Message``."""
        return cls.json(400, {"__type": code, "Message": message})

    def send(self, start_response: StartResponse) -> list[bytes]:
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        start_response(
            f"{self.status} {HTTPStatus(self.status).phrase}",
            [*headers, ("Content-Length", str(len(self.body)))],
        )
        return [self.body]


class MotoGaps:
    """WSGI middleware in front of moto's application. It changes only what moto 5.2 answers differently
    from AWS, so that clients (the Athena extractor included) are written for AWS alone:

    - JSON-protocol errors (Athena, Glue: requests with ``X-Amz-Target``): moto answers IAM refusals with
      an XML body (``<ErrorResponse>``, HTTP 403) that botocore cannot parse; AWS answers HTTP 400 with
      ``{"__type": ..., "Message": ...}`` and the codes ``AccessDeniedException`` and
      ``UnrecognizedClientException`` (Athena API reference, "Common Errors").
    - ``ListQueryExecutions``: moto lists a workgroup's executions oldest first, all at once; AWS lists
      them newest first, ``MaxResults`` (at most 50, the default) per page with a ``NextToken``.
    - ``BatchGetQueryExecution``: moto 5.2 lacks it (HTTP 500). It is answered from moto's
      ``GetQueryExecution`` of each id, in the documented response shape
      (https://docs.aws.amazon.com/athena/latest/APIReference/API_BatchGetQueryExecution.html); ids moto
      does not know come back in ``UnprocessedQueryExecutionIds``. Those ``GetQueryExecution`` requests
      carry the caller's headers with another body, so while moto enforces IAM
      (``INITIAL_NO_AUTH_ACTION_COUNT``) their signature does not match and the call is refused.
    - ``ListDataCatalogs``: moto does not list ``AwsDataCatalog``; AWS always does (AWS CLI reference,
      ``athena list-data-catalogs``, example output).
    - ``GetWorkGroup`` of an unknown name: moto answers ``{"WorkGroup": null}``; AWS answers
      ``InvalidRequestException`` "WorkGroup <name> is not found."

    Every other request reaches moto unchanged.
    """

    def __init__(self, app: WsgiApp):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target:
            return self.app(environ, start_response)  # XML and REST protocols (S3, STS, IAM): unchanged
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        if target == "AmazonAthena.BatchGetQueryExecution":
            answer = self._batch_get_query_execution(environ, body)
        else:
            answer = self._forward(environ, body)
            if answer.status < 400:
                answer = self._as_aws(target, json.loads(body or b"{}"), answer)
        if answer.status >= 400 and answer.body.lstrip().startswith(b"<"):
            answer = _json_error(answer.body)
        return answer.send(start_response)

    def _forward(self, environ: dict[str, Any], body: bytes, target: str | None = None) -> _Answer:
        """moto's answer to the request of ``environ`` with ``body`` (and another ``X-Amz-Target``)."""
        forwarded = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        if target:
            forwarded["HTTP_X_AMZ_TARGET"] = target
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started["status"], started["headers"] = int(status.split()[0]), headers

        chunks = self.app(forwarded, start_response)
        try:
            data = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        return _Answer(started["status"], started["headers"], data)

    def _as_aws(self, target: str, request: dict[str, Any], answer: _Answer) -> _Answer:
        """moto's successful ``answer`` to ``target`` as AWS would give it."""
        if target == "AmazonAthena.ListQueryExecutions":
            return _page_newest_first(request, json.loads(answer.body).get("QueryExecutionIds", []))
        if target == "AmazonAthena.ListDataCatalogs":
            document = json.loads(answer.body)
            summaries = document.get("DataCatalogsSummary", [])
            if not request.get("NextToken") and not any(
                s["CatalogName"] == "AwsDataCatalog" for s in summaries
            ):
                document["DataCatalogsSummary"] = [
                    {"CatalogName": "AwsDataCatalog", "Type": "GLUE"},
                    *summaries,
                ]
            return _Answer.json(answer.status, document)
        if target == "AmazonAthena.GetWorkGroup" and json.loads(answer.body).get("WorkGroup") is None:
            return _Answer.error(
                "InvalidRequestException", f"WorkGroup {request.get('WorkGroup')} is not found."
            )
        return answer

    def _batch_get_query_execution(self, environ: dict[str, Any], body: bytes) -> _Answer:
        found, unprocessed = [], []
        for query_id in json.loads(body or b"{}").get("QueryExecutionIds", []):
            request = json.dumps({"QueryExecutionId": query_id}).encode()
            try:
                got = self._forward(environ, request, "AmazonAthena.GetQueryExecution")
            except KeyError:  # moto's GetQueryExecution of an id it does not know
                got = None
            if got is not None and got.status < 400:
                found.append(json.loads(got.body)["QueryExecution"])
            elif got is not None and got.status in (401, 403):  # the caller is refused: so is the whole call
                return got
            else:
                unprocessed.append(
                    {
                        "QueryExecutionId": query_id,
                        "ErrorCode": "InvalidRequestException",
                        "ErrorMessage": f"QueryExecution {query_id} was not found",
                    }
                )
        return _Answer.json(200, {"QueryExecutions": found, "UnprocessedQueryExecutionIds": unprocessed})


def _page_newest_first(request: dict[str, Any], oldest_first: list[str]) -> _Answer:
    """One ListQueryExecutions page of AWS: newest first, ``MaxResults`` ids, ``NextToken`` if more.

    The token names the last id handed out, so executions started meanwhile do not shift the pages.
    """
    ids = oldest_first[::-1]
    size = request.get("MaxResults") or LIST_QUERY_EXECUTIONS_MAX
    if not 0 <= size <= LIST_QUERY_EXECUTIONS_MAX:
        return _Answer.error("InvalidRequestException", f"MaxResults must be 0-50, got {size}")
    start = 0
    if token := request.get("NextToken"):
        after = token.removeprefix("after:")
        if after not in ids:
            return _Answer.error("InvalidRequestException", f"NextToken {token!r} is not valid")
        start = ids.index(after) + 1
    page = ids[start : start + size]
    document: dict[str, Any] = {"QueryExecutionIds": page}
    if page and start + size < len(ids):
        document["NextToken"] = f"after:{page[-1]}"
    return _Answer.json(200, document)


def _json_error(xml: bytes) -> _Answer:
    """moto's XML error body as AWS's JSON-protocol error."""
    code, message = _XML_CODE.search(xml), _XML_MESSAGE.search(xml)
    moto_code = code[1].decode() if code else "InternalFailure"
    return _Answer.error(
        _JSON_CODES.get(moto_code, moto_code),
        message[1].decode() if message else xml.decode(errors="replace"),
    )


def main(argv: list[str] | None = None) -> None:
    """Serve moto's application behind ``MotoGaps`` (the options of ``python -m moto.server``: -H, -p)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(prog="python -m devstack.moto_gaps", description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server: some answers carry the port
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = MotoGaps(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
