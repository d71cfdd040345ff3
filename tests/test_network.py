"""Which interface carries a node's traffic: derived from the address the user gave."""

from __future__ import annotations

import subprocess
import sys

import pytest

from elastic_nb.rendezvous import network


def test_the_interface_that_owns_an_address():
    assert network.interface_of("127.0.0.1") == "lo"
    assert network.interface_of("localhost") == "lo"


def test_an_address_no_interface_has_names_the_choices():
    with pytest.raises(ValueError, match=r"no interface of this host has the address 192\.0\.2\.9 "
                                         r"\(interfaces: .*lo: 127\.0\.0\.1.*\); give an address"):
        network.interface_of("192.0.2.9")


def test_socket_variables_follow_the_address_unless_the_user_set_them():
    assert network.socket_env("127.0.0.1") == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    assert network.socket_env("127.0.0.1", {"GLOO_SOCKET_IFNAME": "eth9"}, {}) == {
        "NCCL_SOCKET_IFNAME": "lo"}
    assert network.socket_env(None) == {}


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", ""])
def test_a_wildcard_listen_addr_advertises_nothing(wildcard):
    assert network.advertised_address(wildcard) is None


def test_join_names_a_local_addr_this_host_does_not_have():
    out = subprocess.run([sys.executable, "-m", "elastic_nb", "join", "--backend", "c10d",
                          "--endpoint", "127.0.0.1:1", "--run-id", "x", "--nproc", "1",
                          "--local-addr", "192.0.2.9"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--local-addr: no interface of this host has the address 192.0.2.9" in out.stderr
