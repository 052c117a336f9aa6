"""The PostgreSQL and Redis launchers, and the server settings of a Prefect server on them, read back
by the installed Prefect and prefect-redis."""

from __future__ import annotations

import asyncio
import os
from unittest import mock

import asyncpg
import pytest

from devstack.postgres_server import MINIMUM_VERSION, PostgresServer
from devstack.prefect_server import PostgresRedisBackend
from devstack.redis_server import RedisServer


def test_postgres_serves_its_database_on_loopback_and_leaves_nothing_behind():
    server = PostgresServer(database="prefect_test")
    with server:
        workdir = server._workdir
        assert server.url == f"postgresql+asyncpg://postgres@127.0.0.1:{server.port}/prefect_test"

        async def query() -> tuple[str, str]:
            connection = await asyncpg.connect(server.url.replace("postgresql+asyncpg", "postgresql"))
            try:
                return await connection.fetchval("show server_version"), await connection.fetchval(
                    "select current_database()"
                )
            finally:
                await connection.close()

        version, database = asyncio.run(query())
        assert database == "prefect_test"
        assert tuple(int(part) for part in version.split()[0].split(".")[:2]) >= MINIMUM_VERSION
        pid = server.pid
    assert server.pid is None
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_redis_answers_and_keeps_nothing_on_disk():
    with RedisServer() as server:
        with server.client(db=1) as client:
            assert client.ping()
            assert client.set("k", "v")
            assert client.get("k") == b"v"
            config = client.config_get("save") | client.config_get("appendonly")
        assert config == {"save": "", "appendonly": "no"}
        pid = server.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_prefect_and_prefect_redis_read_the_backend_settings_as_intended():
    """The environment variable names are the ones of Prefect's self-hosting guide; the installed
    Prefect and prefect-redis read each into the setting it is meant for."""
    from prefect.settings import Settings
    from prefect_redis.client import RedisMessagingSettings

    backend = PostgresRedisBackend("postgresql+asyncpg://u@127.0.0.1:5999/prefect", "127.0.0.1", 6999)
    with mock.patch.dict(os.environ, backend.server_env()):
        settings, redis = Settings(), RedisMessagingSettings()
    assert settings.server.database.connection_url.get_secret_value() == backend.database_url
    assert settings.server.database.migrate_on_start is False
    assert settings.server.concurrency.lease_storage == "prefect_redis.lease_storage"
    assert settings.server.events.messaging_broker == "prefect_redis.messaging"
    assert settings.server.events.messaging_cache == "prefect_redis.messaging"
    assert settings.server.events.causal_ordering == "prefect_redis.ordering"
    assert settings.server.docket.url == "redis://127.0.0.1:6999/1"
    assert (redis.host, redis.port, redis.db) == ("127.0.0.1", 6999, 0)
