"""devstack.moto_gaps: moto's server answers the Athena calls of the collector as AWS does."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from devstack.moto_server import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, MotoServer

REGION = "eu-west-1"


def client(
    moto: MotoServer, name: str, key_id: str = DUMMY_ACCESS_KEY_ID, secret: str = DUMMY_SECRET_ACCESS_KEY
) -> Any:
    return boto3.client(
        name,
        endpoint_url=moto.url,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def start(athena: Any, count: int, workgroup: str = "primary") -> list[str]:
    return [
        athena.start_query_execution(
            QueryString=f"SELECT {i}",
            WorkGroup=workgroup,
            ResultConfiguration={"OutputLocation": "s3://results/gaps/"},
        )["QueryExecutionId"]
        for i in range(count)
    ]


def test_query_executions_are_listed_newest_first_in_pages_of_at_most_50(moto):
    athena = client(moto, "athena")
    athena.create_work_group(Name="paged")
    started = start(athena, 120, "paged")

    pages = list(athena.get_paginator("list_query_executions").paginate(WorkGroup="paged"))
    small = athena.list_query_executions(WorkGroup="paged", MaxResults=7)

    assert [len(p["QueryExecutionIds"]) for p in pages] == [50, 50, 20]
    assert "NextToken" in pages[1]
    assert "NextToken" not in pages[2]
    assert [i for p in pages for i in p["QueryExecutionIds"]] == started[::-1]
    assert small["QueryExecutionIds"] == started[::-1][:7]
    later = start(athena, 1, "paged")  # started between two pages: the next page does not shift
    after = athena.list_query_executions(WorkGroup="paged", MaxResults=7, NextToken=small["NextToken"])
    assert after["QueryExecutionIds"] == started[::-1][7:14]
    assert later[0] not in after["QueryExecutionIds"]


def test_batch_get_query_execution_answers_known_ids_and_reports_the_others(moto):
    athena = client(moto, "athena")
    ids = start(athena, 3)

    answer = athena.batch_get_query_execution(QueryExecutionIds=[*ids, "no-such-id"])

    assert [e["QueryExecutionId"] for e in answer["QueryExecutions"]] == ids
    assert all(e["Status"]["State"] == "SUCCEEDED" for e in answer["QueryExecutions"])
    assert (
        answer["QueryExecutions"][0] == athena.get_query_execution(QueryExecutionId=ids[0])["QueryExecution"]
    )
    assert answer["UnprocessedQueryExecutionIds"] == [
        {
            "QueryExecutionId": "no-such-id",
            "ErrorCode": "InvalidRequestException",
            "ErrorMessage": "QueryExecution no-such-id was not found",
        }
    ]


def test_aws_data_catalog_is_listed_first(moto):
    athena = client(moto, "athena")
    athena.create_data_catalog(Name="federated", Type="LAMBDA", Parameters={"function": "arn:aws:lambda:x"})

    names = [c["CatalogName"] for c in athena.list_data_catalogs()["DataCatalogsSummary"]]

    assert names[0] == "AwsDataCatalog"
    assert "federated" in names
    assert names.count("AwsDataCatalog") == 1


def test_an_unknown_workgroup_is_an_invalid_request(moto):
    with pytest.raises(ClientError) as raised:
        client(moto, "athena").get_work_group(WorkGroup="no-such-workgroup")
    assert raised.value.response["Error"] == {
        "Code": "InvalidRequestException",
        "Message": "WorkGroup no-such-workgroup is not found.",
    }


def test_refusals_of_json_apis_are_json_errors_with_aws_codes(moto):
    """moto's IAM refusals are XML; Athena and Glue answer JSON with their own codes."""
    moto.enforce_iam(after_requests=3)
    try:
        iam = client(moto, "iam")
        iam.create_user(UserName="gaps-reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="gaps-reader", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="gaps-reader")["AccessKey"]
        reader = {"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

        errors = {}
        for name, call in (
            ("athena", lambda: client(moto, "athena", **reader).list_work_groups()),
            ("glue", lambda: client(moto, "glue", **reader).get_databases()),
            ("unknown key", lambda: client(moto, "athena", "AKIAUNKNOWN000000000", "x").list_work_groups()),
        ):
            with pytest.raises(ClientError) as raised:
                call()
            errors[name] = raised.value.response["Error"]
    finally:
        moto.enforce_iam(after_requests=None)

    assert errors["athena"]["Code"] == "AccessDeniedException"
    assert errors["athena"]["Message"].endswith("is not authorized to perform: athena:ListWorkGroups")
    assert errors["glue"]["Code"] == "AccessDeniedException"
    assert "glue:GetDatabases" in errors["glue"]["Message"]
    assert errors["unknown key"] == {
        "Code": "UnrecognizedClientException",
        "Message": "The security token included in the request is invalid.",
    }
