"""Shared pytest fixtures: leftover-process checks, the rendezvous backends and the cluster."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster import Cluster
from etcd_fixtures import *  # noqa: F403 - session etcd servers: etcd_v2_server, etcd_v3_server
from util import job_processes, leftover_processes, wait_until

import elastic_nb as enb

ATTACKER = "enb-mallory"


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every test must leave no busy host, and no worker, behind.

    Idle warm hosts (and each one's forkserver) stay for the next test, as
    they stay for a notebook's next cell: the suite runs on warm hosts.
    """
    yield
    try:
        wait_until(lambda: not leftover_processes(), timeout=15, what="job processes to exit")
    except TimeoutError:
        leftovers = [(p.pid, " ".join(p.cmdline())[:120]) for p in leftover_processes()]
        for proc in leftover_processes():
            proc.kill()
        pytest.fail(f"processes left behind: {leftovers}")


@pytest.fixture(autouse=True, scope="session")
def warm_hosts_end_with_shutdown():
    """At the end, ``shutdown()`` ends every warm host and nothing of any job is left."""
    yield
    enb.shutdown()
    wait_until(lambda: not job_processes(), timeout=15, what="warm hosts to exit")


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run the test's rdzv fixture on these "
                                       "rendezvous backends only (default: all four)")


def pytest_generate_tests(metafunc):
    """``rdzv`` runs on every backend, or on those a ``backends`` marker names."""
    if "rdzv" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("rdzv", marker.args if marker else enb.BACKENDS, indirect=True)


@pytest.fixture
def rdzv(request) -> dict:
    """launch() keyword arguments selecting one rendezvous backend (the test's parameter).

    etcd and etcd-v2 (torch's, v2 API) share one etcd started with --enable-v2;
    etcd3 (ours, v3 API) runs against one without it. c10d workers start with
    spawn, so spawn stays covered; the etcd family's with forkserver (the
    default), which keeps the suite within CI's time (the rendezvous, not the
    start method, is under test there). A test that needs a start method sets it.
    """
    if request.param == "c10d":
        return {"backend": "c10d", "start_method": "spawn"}
    server = request.getfixturevalue("etcd_v3_server" if request.param == "etcd3" else "etcd_v2_server")
    return {"backend": request.param, "endpoint": server.endpoint, "start_method": "forkserver"}


@pytest.fixture(scope="session")
def cluster():
    """A Slurm cluster and an SSH host in network namespaces (tests/cluster.py), for the session:
    starting Slurm costs seconds. Each test leaves its queue empty and nothing of its own
    running on the cluster's hosts (``cluster_left_clean`` checks)."""
    why = Cluster.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster tests must run in CI: {why}")
        pytest.skip(why)
    with Cluster() as built:
        yield built


@pytest.fixture(autouse=True)
def cluster_left_clean(request):
    """A test that used ``cluster`` leaves no job in its queue and no process of its own (a job,
    an ssh session) on its hosts; what it left is cancelled or killed so the next test starts
    clean, and the test fails."""
    yield
    if "cluster" not in request.fixturenames:
        return
    built: Cluster = request.getfixturevalue("cluster")

    def clean() -> bool:
        return not built.squeue() and not any(built.other_pids(host) for host in built.hosts)

    try:
        wait_until(clean, timeout=15, what="the cluster's queue and hosts to empty", interval=0.2)
    except TimeoutError:
        jobs = built.squeue()
        strays = {host.name: built.other_pids(host) for host in built.hosts}
        built.cancel_all()
        built.wait_for_empty_queue(timeout=15)
        for pids in strays.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        pytest.fail(f"left on the cluster: jobs {jobs}, processes {strays}")


@dataclass(frozen=True)
class Attacker:
    """A second local Unix user, and a directory it may read and write."""

    user: str
    dir: str
    script: str = str(Path(__file__).with_name("attack.py"))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """``tests/attack.py`` as this user, with the system's Python (it cannot read ours)."""
        return subprocess.run(["runuser", "-u", self.user, "--", "/usr/bin/python3", self.script,
                               *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def attacker():
    """A second local Unix user, made for the test, and a directory it may read and write (not
    under pytest's, which only root may enter)."""
    made = False
    try:
        pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
                       check=True)
        made = True
    shared = tempfile.mkdtemp(prefix="enb-attack-")
    os.chmod(shared, 0o1777)
    yield Attacker(ATTACKER, shared)
    shutil.rmtree(shared, ignore_errors=True)
    if made:
        subprocess.run(["userdel", ATTACKER], check=False)
