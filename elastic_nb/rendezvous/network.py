"""Which interface carries a job's traffic, derived from the address the user gave.

A node advertises one address in the rendezvous (``listen_addr`` for the
notebook's nodes, ``--local-addr`` for a joined one). Its ranks must use the
interface that owns that address for gloo and NCCL, or, on a multi-homed
host, gloo picks whatever the hostname resolves to (often loopback) and peers
on other hosts cannot connect. ``socket_env`` sets ``GLOO_SOCKET_IFNAME`` and
``NCCL_SOCKET_IFNAME`` to that interface unless the user set them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

import psutil

SOCKET_IFNAME_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
WILDCARDS = ("0.0.0.0", "::", "")


def interface_of(address: str) -> str:
    """The name of the interface that owns ``address``; ValueError naming the choices."""
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        try:
            wanted = ipaddress.ip_address(socket.gethostbyname(address))
        except (OSError, ValueError):
            raise ValueError(f"{address!r} is neither an IP address nor a name this host "
                             "resolves") from None
    owners: dict[str, list[str]] = {}
    for name, addresses in psutil.net_if_addrs().items():
        for item in addresses:
            if item.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = item.address.split("%", 1)[0]
            owners.setdefault(name, []).append(text)
            if ipaddress.ip_address(text) == wanted:
                return name
    known = "; ".join(f"{name}: {', '.join(addrs)}" for name, addrs in sorted(owners.items()))
    raise ValueError(f"no interface of this host has the address {address} "
                     f"(interfaces: {known}); give an address of this host")


def advertised_address(listen_addr: str) -> str | None:
    """What a node on this host tells its peers: ``listen_addr``, unless it is a wildcard."""
    return None if listen_addr in WILDCARDS else listen_addr


def socket_env(address: str | None, *settings: Mapping[str, str]) -> dict[str, str]:
    """``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME`` for ``address``, where no setting has them.

    ``settings`` are the environments the user controls (``env=``, ``os.environ``).
    """
    if address is None:
        return {}
    interface = interface_of(address)
    return {name: interface for name in SOCKET_IFNAME_VARIABLES
            if not any(name in setting for setting in settings)}


def address_towards(host: str) -> str:
    """This host's address on the interface that reaches ``host`` (what a node the notebook
    started advertises: nobody types a per-node address). OSError if no route leads there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))  # a datagram socket only picks its route: nothing is sent
        return str(probe.getsockname()[0])
