"""Answer the Athena call moto's server lacks, at the boto3 boundary, for the demo (design.md §7).

moto 5.2 implements ``GetQueryExecution`` but not ``BatchGetQueryExecution``. ``answer_batch_get_query_execution``
registers a ``before-call`` handler on one boto3 Athena client that answers
``BatchGetQueryExecution`` from ``GetQueryExecution`` of each id, in the documented response shape
(https://docs.aws.amazon.com/athena/latest/APIReference/API_BatchGetQueryExecution.html): ids moto
does not know come back in ``UnprocessedQueryExecutionIds``. The extractor's code stays as it is
for AWS; only the demo's client gets the handler. Tests use ``botocore.stub.Stubber`` instead.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError


class _Ok:
    status_code = 200


def answer_batch_get_query_execution(athena: Any) -> None:
    """Make ``athena`` (a boto3 Athena client on moto's server) answer ``BatchGetQueryExecution``."""

    def remember_ids(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["query_execution_ids"] = list(params["QueryExecutionIds"])

    def handler(context: dict[str, Any], **_: Any) -> tuple[_Ok, dict[str, Any]]:
        found, unprocessed = [], []
        for query_id in context["query_execution_ids"]:
            try:
                found.append(athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"])
            except ClientError as exc:
                unprocessed.append(
                    {
                        "QueryExecutionId": query_id,
                        "ErrorCode": exc.response["Error"]["Code"],
                        "ErrorMessage": exc.response["Error"].get("Message", ""),
                    }
                )
        return _Ok(), {"QueryExecutions": found, "UnprocessedQueryExecutionIds": unprocessed}

    # before-call sees the serialised request; the ids are taken from the parameters just before.
    athena.meta.events.register("before-parameter-build.athena.BatchGetQueryExecution", remember_ids)
    athena.meta.events.register("before-call.athena.BatchGetQueryExecution", handler)
