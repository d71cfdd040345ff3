"""Shared pytest fixtures: leftover-process checks and the rendezvous backends."""

from __future__ import annotations

import pytest
from etcd_fixtures import *  # noqa: F403 - session etcd servers: etcd_v2_server, etcd_v3_server
from util import job_processes, leftover_processes, wait_until

import elastic_nb as enb


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
