"""Two hosts on one machine: network namespaces joined by a veth pair.

``TwoHosts`` creates namespaces ``enb-a-PID`` and ``enb-b-PID``, each with
its loopback up and one end of a veth pair holding a TEST-NET-1 address
(192.0.2.1 on A, 192.0.2.2 on B, RFC 5737: never routed anywhere). Nothing
leaves the machine: the namespaces see only each other. ``close()`` kills
whatever still runs inside them and deletes them (which deletes the veth
pair too); it runs even if a test failed.

Creating namespaces needs root and iproute2's ``ip`` (CI runs as root;
``make test`` installs iproute2 where it is missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

PREFIX = 24


@dataclass(frozen=True)
class Host:
    namespace: str
    interface: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True,
                             text=True, check=False).stdout
        return [int(pid) for pid in out.split()]


class TwoHosts:
    def __init__(self) -> None:
        tag = os.getpid()
        self.a = Host(f"enb-a-{tag}", f"enbA{tag % 100000}", "192.0.2.1")
        self.b = Host(f"enb-b-{tag}", f"enbB{tag % 100000}", "192.0.2.2")
        self._made: list[str] = []

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here, or None."""
        if os.geteuid() != 0:
            return "creating network namespaces needs root"
        if shutil.which("ip") is None:
            return "iproute2's 'ip' is not installed (make test installs it)"
        return None

    def open(self) -> TwoHosts:
        try:
            for host in (self.a, self.b):
                _ip("netns", "add", host.namespace)
                self._made.append(host.namespace)
            _ip("link", "add", self.a.interface, "type", "veth", "peer", "name", self.b.interface)
            for host in (self.a, self.b):
                _ip("link", "set", host.interface, "netns", host.namespace)
                _ip("-n", host.namespace, "addr", "add", f"{host.address}/{PREFIX}",
                    "dev", host.interface)
                _ip("-n", host.namespace, "link", "set", host.interface, "up")
                _ip("-n", host.namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for namespace in self._made:
            host = self.a if namespace == self.a.namespace else self.b
            for pid in host.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", namespace], check=False)
        self._made.clear()

    def __enter__(self) -> TwoHosts:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")
