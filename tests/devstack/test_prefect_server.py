"""The ``prefect server start`` launcher of the demo and the tests."""

from __future__ import annotations

import os

import httpx


def test_the_ui_is_told_the_api_of_this_server_not_the_default_port(prefect_api_url: str) -> None:
    """The session's server runs on a free port; its UI must call that port's API (``/ui-settings``),
    not Prefect's default ``http://127.0.0.1:4200/api``."""
    ui_url = prefect_api_url.removesuffix("/api")
    settings = httpx.get(f"{ui_url}/ui-settings", timeout=10).json()
    assert settings["api_url"] == prefect_api_url
    assert os.environ["PREFECT_API_URL"] == prefect_api_url
    page = httpx.get(ui_url, timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
