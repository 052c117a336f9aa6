"""The ``prefect server start`` launcher of the demo and the tests."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sqlite3
import uuid
from pathlib import Path

import httpx

from devstack.prefect_server import sqlite_schema


def test_the_ui_is_told_the_api_of_this_server_not_the_default_port(prefect_api_url: str) -> None:
    """The session's server runs on a free port; its UI must call that port's API (``/ui-settings``),
    not Prefect's default ``http://127.0.0.1:4200/api``."""
    ui_url = prefect_api_url.removesuffix("/api")
    settings = httpx.get(f"{ui_url}/ui-settings", timeout=10).json()
    assert settings["api_url"] == prefect_api_url
    assert os.environ["PREFECT_API_URL"] == prefect_api_url
    page = httpx.get(ui_url, timeout=10)
    assert page.status_code == 200
    assert "<html" in page.text.lower()


def test_a_server_starts_from_a_copy_of_the_cached_schema_which_it_never_writes(prefect_api_url: str) -> None:
    """The session's server runs on a copy of ``sqlite_schema()``: the cached database holds Prefect's
    schema at the installed version, and what the server stores does not reach it."""
    cached = sqlite_schema()
    assert cached.name == f"prefect-{importlib.metadata.version('prefect')}.db"
    database = Path(os.environ["PREFECT_HOME"]).parent / "prefect.db"  # the server's, beside its client home
    assert database.exists()
    assert not database.samefile(cached)
    name = f"schema-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{prefect_api_url}/flows/", json={"name": name}, timeout=10).raise_for_status()
    for path, flows in ((database, 1), (cached, 0)):
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            assert connection.execute("SELECT version_num FROM alembic_version").fetchone()
            assert connection.execute("SELECT count(*) FROM flow WHERE name = ?", (name,)).fetchone() == (
                flows,
            )
    assert [p.name for p in cached.parent.glob(cached.name + "*")] == [cached.name]  # no -wal, no -shm
