"""Nothing listens beyond what was asked: a default job is reachable on loopback only.

The embedded store and the join port bind to ``listen_addr`` (127.0.0.1 by
default); agents listen on nothing; workers' gloo pairs use the loopback
interface (``GLOO_SOCKET_IFNAME`` follows the address).
"""

from __future__ import annotations

import psutil
import scenarios
from util import is_loopback, job_tree

import elastic_nb as enb


def listening(proc: psutil.Process) -> list[str]:
    return [f"{c.laddr.ip}:{c.laddr.port}" for c in proc.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN]


def on_loopback(endpoint: str) -> bool:
    return is_loopback(endpoint.rsplit(":", 1)[0])


def test_a_default_job_listens_on_loopback_only(tmp_path):
    job = enb.launch(scenarios.held_at, "in_collective", str(tmp_path),
                     nodes=[enb.Node(1), enb.Node(1)], start_method="forkserver")
    try:
        job.wait_until(lambda: all("phase joined" in job.logs(rank=r) for r in (0, 1)),
                       what="both ranks in the gloo group")
        kernel = listening(psutil.Process())
        by_kind: dict[str, list[str]] = {}
        for proc in job_tree(job):
            kind = "agent" if "elastic_nb.node.host" in " ".join(proc.cmdline()) else "worker"
            by_kind.setdefault(kind, []).extend(listening(proc))
    finally:
        job.stop()
    assert kernel, "the kernel hosts the store and the join port"
    assert job.endpoint in kernel and job.join_address in kernel
    assert all(on_loopback(e) for e in kernel), kernel
    assert by_kind.get("agent", []) == [], "agents listen on nothing"
    print("worker listeners:", by_kind.get("worker"))
    assert by_kind.get("worker"), "rank 0 hosts the workers' store"
    assert all(on_loopback(e) for e in by_kind.get("worker", [])), by_kind["worker"]
