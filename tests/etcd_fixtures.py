"""Session-wide local etcd servers for the tests; conftest.py re-exports them.

``etcd_v3_server`` runs without the v2 API (what etcd 3.6 offers), for the
``etcd3`` backend; ``etcd_v2_server`` runs with ``--enable-v2`` for torch's
``etcd`` and ``etcd-v2`` backends. Tests share a server, so each uses its own
run id or key prefix.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from elastic_nb.rendezvous.etcd_server import EtcdServer

__all__ = ["etcd_v2_server", "etcd_v3_server"]


@pytest.fixture(scope="session")
def etcd_v3_server() -> Iterator[EtcdServer]:
    """A running etcd serving only the v3 API."""
    with EtcdServer(enable_v2=False) as server:
        yield server


@pytest.fixture(scope="session")
def etcd_v2_server() -> Iterator[EtcdServer]:
    """A running etcd serving the v2 API too."""
    with EtcdServer(enable_v2=True) as server:
        yield server
