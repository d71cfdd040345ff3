"""The embedded c10d store (`host_store`): it listens only on the address it
is given, never on every interface, and clients reach it there."""

from __future__ import annotations

import socket
from datetime import timedelta

import psutil
import pytest
import torch.distributed as dist
from torch.distributed import TCPStore
from util import is_loopback

from elastic_nb.rendezvous.embedded import free_port, host_store


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


LOOPBACKS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback")),
]


def listen_addresses(port: int) -> list[str]:
    """The addresses this process listens on at ``port``."""
    return [
        conn.laddr.ip
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    ]


@pytest.fixture(params=LOOPBACKS)
def loopback(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(loopback: str) -> TCPStore:
    return host_store(loopback)


def test_store_listens_on_loopback_only(loopback: str, store: TCPStore) -> None:
    addresses = listen_addresses(store.port)
    assert addresses, f"nothing in this process listens on port {store.port}"
    assert all(is_loopback(ip) for ip in addresses), (
        f"the store on port {store.port} listens on {addresses}, not only on loopback"
    )
    assert addresses == [loopback]


def test_a_client_sets_and_gets_through_the_store(loopback: str, store: TCPStore) -> None:
    client = TCPStore(loopback, store.port, is_master=False, timeout=timedelta(seconds=10))
    client.set("from-client", "hello")
    assert store.get("from-client") == b"hello"
    store.set("from-server", b"\x00\xff")
    assert client.get("from-client") == b"hello"
    assert client.get("from-server") == b"\x00\xff"
    assert client.add("counter", 2) == 2 and store.add("counter", 3) == 5


def test_an_explicit_port_is_the_one_bound() -> None:
    port = free_port()
    store = host_store("127.0.0.1", port)
    assert store.port == port
    assert listen_addresses(port) == ["127.0.0.1"]


def test_a_port_in_use_is_a_network_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(dist.DistNetworkError, match=f"127.0.0.1:{port}"):
            host_store("127.0.0.1", port)
