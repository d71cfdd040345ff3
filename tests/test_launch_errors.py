"""Bad input gets a clear LaunchError that names the fix, before any process starts."""

from __future__ import annotations

import threading

import psutil
import pytest

import elastic_nb as enb


def work(x=1):
    return x


@pytest.fixture(autouse=True)
def no_process_starts():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before, "a rejected launch started a process"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nproc": 0}, r"nproc must be >= 1, got 0"),
        ({"nproc": "4"}, r"nproc must be an int"),
        ({"backend": "etdc"}, r"unknown backend 'etdc'; did you mean 'etcd'\? \(known: c10d, etcd, etcd-v2, etcd3\)"),
        ({"backend": "etcd3"}, r"needs endpoint='host:port'.*EtcdServer"),
        ({"backend": "etcd", "endpoint": "localhost"}, r"must be 'host:port'"),
        ({"max_restarts": -1}, r"max_restarts must be >= 0, got -1"),
        ({"nprocs": 4}, r"unknown option 'nprocs'; did you mean nproc=\?"),
        ({"max_restart": 2}, r"did you mean max_restarts=\?"),
        ({"start_method": "fork"}, r"spawn, forkserver.*fork is unsafe in a Jupyter kernel"),
        ({"log_line_prefix_template": "[${role}]"}, r"unknown field\(s\) role; known: \$\{role_name\}"),
        ({"env": {"LR": 0.1}}, r"env values must be strings: 'LR'=0.1 \(write LR='0.1'\)"),
        ({"min_nodes": 3, "max_nodes": 2}, r"min_nodes \(3\) must not exceed max_nodes \(2\)"),
        ({"nodes": [enb.Node(1), enb.Node(1)], "max_nodes": 1}, r"2 nodes given but max_nodes=1"),
        ({"nproc": 2, "nodes": [enb.Node(1)]}, r"either nproc=N .* or nodes="),
        ({"nodes": [enb.Node(0)]}, r"nodes\[0\]\.nproc must be >= 1"),
        ({"run_id": "has space"}, r"run_id 'has space' must be letters"),
        ({"master_port": 70000}, r"master_port must be between 1 and 65535"),
        ({"rdzv_timeout": 0}, r"rdzv_timeout must be > 0"),
        ({"listen_addr": "192.0.2.77"},
         r"listen_addr: no interface of this host has the address 192\.0\.2\.77 \(interfaces: .*lo: 127\.0\.0\.1"),
        ({"listen_addr": "no-such-host.invalid"}, r"listen_addr: 'no-such-host.invalid' is neither an IP"),
    ],
)
def test_bad_option(kwargs, message):
    with pytest.raises(enb.LaunchError, match=message):
        enb.launch(work, **kwargs)


def test_a_launch_error_is_caught_as_the_value_error_it_is():
    """Code that guards a launch with ``except ValueError`` gets the message that names the fix."""
    try:
        enb.launch(work, nproc=0)
    except ValueError as caught:
        assert isinstance(caught, enb.LaunchError) and "nproc must be >= 1, got 0" in str(caught)
    else:
        pytest.fail("a launch with nproc=0 started")


def test_nothing_to_run():
    with pytest.raises(enb.LaunchError, match="nothing to run"):
        enb.launch(nproc=2)
    with pytest.raises(enb.LaunchError, match="give every Node its own fn="):
        enb.launch(nodes=[enb.Node(1, fn=work), enb.Node(1)])


def test_arguments_that_do_not_fit_the_function():
    with pytest.raises(enb.LaunchError, match=r"work\(x=1\) cannot be called with these arguments"):
        enb.launch(work, 1, 2, nproc=1)
    with pytest.raises(enb.LaunchError, match="unexpected keyword argument 'y'"):
        enb.launch(work, nproc=1, y=3)


def test_unpicklable_argument_is_named():
    with pytest.raises(enb.LaunchError, match=r"cannot send argument 0 \(lock\) to the workers"):
        enb.launch(work, threading.Lock(), nproc=1)
    with pytest.raises(enb.LaunchError, match=r"keyword argument 'x' \(lock\)"):
        enb.launch(work, nproc=1, x=threading.Lock())


def test_unpicklable_captured_variable_is_named():
    guard = threading.Lock()

    def uses_lock():
        with guard:
            return 1

    with pytest.raises(enb.LaunchError, match=r"variable 'guard' \(lock\) captured by .*uses_lock\(\)"):
        enb.launch(uses_lock, nproc=1)
