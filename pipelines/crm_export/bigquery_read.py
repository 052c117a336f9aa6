"""``ReadFromStorageApi``: the rows of a BigQuery table through the BigQuery Storage Read API at an
endpoint of one's choosing — a Private Service Connect endpoint, or a local emulator — which Beam's
``ReadFromBigQuery`` cannot be pointed at (it makes its clients with Google's default endpoints).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import apache_beam as beam

from pipelines.transport import is_loopback

#: gRPC channel options of the read client: a ReadRows message can exceed gRPC's 4 MiB default (the
#: client library's own transport lifts the limit the same way).
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1))


def storage_read_client(endpoint: str) -> Any:
    """A ``BigQueryReadClient`` for ``endpoint``: ``host:port`` or ``https://host[:port]`` (TLS, the
    environment's Google credentials), or ``http://host:port`` (plaintext, no credentials) for a
    loopback host only — an emulator on this machine. Raises ``ValueError`` for plaintext to another host.
    """
    from google.cloud.bigquery_storage_v1 import BigQueryReadClient

    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme == "http":
        if not is_loopback(parts.hostname or ""):
            raise ValueError(
                f"BigQuery Storage endpoint {endpoint!r}: plaintext (http://) is for an emulator on this "
                "machine (a loopback host) only; use https:// or host:port"
            )
        import grpc
        from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
            BigQueryReadGrpcTransport,
        )

        channel = grpc.insecure_channel(parts.netloc, options=CHANNEL_OPTIONS)
        return BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))
    return BigQueryReadClient(client_options={"api_endpoint": f"{parts.hostname}:{parts.port or 443}"})


class _CreateReadSession(beam.DoFn):
    """A table ``project:dataset.table`` → (the read session, serialized; each of its stream names)."""

    def __init__(self, endpoint: str, max_streams: int):
        self.endpoint = endpoint
        self.max_streams = max_streams

    def process(self, table: str) -> Iterator[tuple[bytes, str]]:
        from google.cloud.bigquery_storage_v1 import types

        project, dataset, name = re.split(r"[:.]", table, maxsplit=2)
        session = storage_read_client(self.endpoint).create_read_session(
            parent=f"projects/{project}",
            read_session=types.ReadSession(
                table=f"projects/{project}/datasets/{dataset}/tables/{name}",
                data_format=types.DataFormat.ARROW,
            ),
            max_stream_count=self.max_streams,
        )
        serialized = types.ReadSession.serialize(session)
        for stream in session.streams:
            yield serialized, stream.name


class _ReadStream(beam.DoFn):
    """(read session, stream name) → the stream's rows as dicts (a RECORD column as a nested dict)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def setup(self) -> None:
        self._client = storage_read_client(self.endpoint)

    def process(self, element: tuple[bytes, str]) -> Iterator[dict[str, Any]]:
        from google.cloud.bigquery_storage_v1 import types

        serialized, stream = element
        session = types.ReadSession.deserialize(serialized)
        for page in self._client.read_rows(stream).rows(session).pages:
            yield from page.to_arrow().to_pylist()


class ReadFromStorageApi(beam.PTransform):
    """The rows of ``table`` (``project:dataset.table``) read with the Storage Read API at ``endpoint``
    (``storage_read_client``), in up to ``max_streams`` streams read in parallel: dicts, as Beam's
    ``ReadFromBigQuery(method=DIRECT_READ)`` gives them."""

    def __init__(self, table: str, endpoint: str, max_streams: int = 16):
        super().__init__()
        self.table = table
        self.endpoint = endpoint
        self.max_streams = max_streams

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Table" >> beam.Create([self.table])
            | "CreateReadSession" >> beam.ParDo(_CreateReadSession(self.endpoint, self.max_streams))
            | "SpreadStreams" >> beam.Reshuffle()
            | "ReadStream" >> beam.ParDo(_ReadStream(self.endpoint))
        )
