"""Fixtures of the metadata tests: one moto server for the whole session, emptied for each module.

Starting moto's server takes a second or two; the tests share one (``devstack.moto_server.MotoServer``,
behind ``devstack.moto_gaps``). Each module that asks for ``moto`` starts from an empty server that does
not enforce IAM (``MotoServer.reset``); a test that needs IAM enforced turns it on and off around itself
(``MotoServer.enforce_iam``). Tests that stop a server start their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.moto_server import MotoServer


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def moto(moto_session: MotoServer) -> MotoServer:
    """The session's moto server, emptied (every resource of earlier modules gone, IAM not enforced)."""
    moto_session.reset()
    return moto_session
