"""Warm node hosts: a launch reuses an idle host, sees what changed in the kernel, and a
host's lifecycle (keep-warm, shutdown, kill_node, stop, kernel death) is what it says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
import scenarios
from util import alive, job_processes, wait_until

import elastic_nb as enb


def host_of(job: enb.Job, node: int = 0) -> tuple[int, bool]:
    view = job.snapshot().nodes[node]
    assert view.host_pid is not None
    return view.host_pid, view.warm


def idle_pids() -> set[int]:
    return {h.pid for h in enb.hosts() if h.state == "idle"}


@pytest.fixture
def fresh_pool():
    """No idle host from an earlier test: the next launch starts its own."""
    enb.shutdown()
    yield
    enb.shutdown()


def test_a_repeat_launch_runs_on_the_host_the_last_job_left(fresh_pool):
    first = enb.launch(scenarios.dist_sum, nproc=2, keep_warm=60)
    assert first.result(timeout=120) == {0: 1, 1: 1}
    host, warm = host_of(first)
    assert not warm
    wait_until(lambda: host in idle_pids(), timeout=10, what="the host idle")
    second = enb.launch(scenarios.dist_sum, nproc=2, keep_warm=60)
    assert host_of(second) == (host, True)
    assert [h.state for h in enb.hosts() if h.pid == host] == ["busy"]
    assert second.result(timeout=120) == {0: 1, 1: 1}
    wait_until(lambda: host in idle_pids(), timeout=10, what="the host idle again")
    info = next(h for h in enb.hosts() if h.pid == host)
    assert (info.jobs, info.run_id) == (2, second.run_id) and 0 < info.expires_in <= 60
    assert "warm hosts: node 0" in second.summary()


def test_what_changed_in_the_kernel_reaches_the_next_job_on_the_same_host(
        fresh_pool, tmp_path, monkeypatch):
    lib, lib2, elsewhere = tmp_path / "lib", tmp_path / "lib2", tmp_path / "elsewhere"
    for folder in (lib, lib2, elsewhere):
        folder.mkdir()
    (lib / "warm_mod.py").write_text("VALUE = 'as first written'\n")
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.setenv("ENB_WARM", "first")
    monkeypatch.setenv("ENB_GONE", "set for the first job only")
    monkeypatch.chdir(tmp_path)
    first_only = tmp_path / "first_only"
    first_only.mkdir()
    sys.path.insert(0, str(first_only))

    def report():
        import warm_mod
        return {"fn": "first definition", "module": warm_mod.VALUE,
                "env": os.environ.get("ENB_WARM"), "gone": os.environ.get("ENB_GONE"),
                "extra": os.environ.get("ENB_EXTRA"), "cwd": os.getcwd()}

    first = enb.launch(report, nproc=1, keep_warm=60)
    assert first.result(timeout=120)[0] == {
        "fn": "first definition", "module": "as first written", "env": "first",
        "gone": "set for the first job only", "extra": None, "cwd": str(tmp_path)}
    host, _ = host_of(first)
    wait_until(lambda: host in idle_pids(), timeout=10, what="the host idle")

    (lib / "warm_mod.py").write_text("VALUE = 'edited on disk between the jobs'\n")
    (lib2 / "warm_mod2.py").write_text("WHERE = 'a folder added to sys.path'\n")
    monkeypatch.syspath_prepend(str(lib2))
    monkeypatch.setenv("ENB_WARM", "second")
    monkeypatch.delenv("ENB_GONE")
    monkeypatch.chdir(elsewhere)
    sys.path.remove(str(first_only))

    def report():  # the cell, edited and run again
        import warm_mod
        import warm_mod2
        return {"fn": "second definition", "module": warm_mod.VALUE, "path": warm_mod2.WHERE,
                "env": os.environ.get("ENB_WARM"), "gone": os.environ.get("ENB_GONE"),
                "extra": os.environ.get("ENB_EXTRA"), "cwd": os.getcwd(),
                "rank": os.environ["RANK"], "world": os.environ["WORLD_SIZE"],
                "run_id": os.environ["TORCHELASTIC_RUN_ID"],
                "first_only_on_path": any(p.endswith("first_only") for p in sys.path)}

    second = enb.launch(report, nproc=1, keep_warm=60, env={"ENB_EXTRA": "from env="})
    assert host_of(second) == (host, True)
    assert second.result(timeout=120)[0] == {
        "fn": "second definition", "module": "edited on disk between the jobs",
        "path": "a folder added to sys.path", "env": "second", "gone": None,
        "extra": "from env=", "cwd": str(elsewhere), "rank": "0", "world": "1",
        "run_id": second.run_id, "first_only_on_path": False}


def test_a_host_serves_job_after_job_without_piling_up_threads_or_files(fresh_pool):
    counts = []
    for _ in range(4):
        job = enb.launch(scenarios.dist_sum, nproc=2, keep_warm=60)
        assert job.result(timeout=120) == {0: 1, 1: 1}
        host, _ = host_of(job)
        wait_until(lambda pid=host: pid in idle_pids(), timeout=10, what="the host idle")
        proc = psutil.Process(host)
        counts.append((host, proc.num_threads(), proc.num_fds()))
    assert len({pid for pid, _, _ in counts}) == 1, counts
    assert counts[1][1:] == counts[3][1:], counts


def test_stop_ends_the_workers_and_keeps_the_host_for_the_next_launch(fresh_pool):
    job = enb.launch(scenarios.wait_forever, nproc=2, keep_warm=60)
    job.wait_until(lambda: job.logs().count("waiting") == 2, timeout=60, what="both ranks")
    workers = [w.pid for w in job.workers]
    host, _ = host_of(job)
    job.stop()
    assert job.state == "stopped" and not any(alive(p) for p in workers)
    wait_until(lambda: host in idle_pids(), timeout=10, what="the stopped job's host idle")
    again = enb.launch(scenarios.dist_sum, nproc=2, keep_warm=60)
    assert host_of(again) == (host, True)
    assert again.result(timeout=120) == {0: 1, 1: 1}


def test_a_stopped_etcd_v1_job_does_not_keep_its_host(fresh_pool, etcd_v2_server):
    """torch's etcd (v1) handler keeps renewing its leases after a stop (they cannot be
    silenced without closing the rendezvous), so that host exits instead of idling."""
    job = enb.launch(scenarios.wait_forever, nproc=1, keep_warm=60, backend="etcd",
                     endpoint=etcd_v2_server.endpoint)
    job.wait_until(lambda: "waiting" in job.logs(), timeout=60, what="the rank")
    host, _ = host_of(job)
    job.stop()
    wait_until(lambda: not alive(host), timeout=15, what="the host to exit")
    assert host not in {h.pid for h in enb.hosts()}


def test_keep_warm_zero_ends_the_host_with_the_job(fresh_pool):
    job = enb.launch(scenarios.dist_sum, nproc=2, keep_warm=0)
    assert job.result(timeout=120) == {0: 1, 1: 1}
    host, _ = host_of(job)
    wait_until(lambda: not alive(host), timeout=15, what="the host to exit")
    assert not enb.hosts() and not job_processes()


def test_an_idle_host_exits_when_its_keep_warm_time_is_up(fresh_pool):
    job = enb.launch(scenarios.rank, nproc=1, keep_warm=0.5)
    assert job.result(timeout=120) == {0: 0}
    host, _ = host_of(job)
    wait_until(lambda: not alive(host), timeout=15, what="the idle host to time out")
    assert not enb.hosts()


def test_shutdown_ends_every_idle_host_now(fresh_pool):
    jobs = [enb.launch(scenarios.rank, nproc=1, keep_warm=600) for _ in range(2)]
    assert [j.result(timeout=120) for j in jobs] == [{0: 0}, {0: 0}]
    hosts = {host_of(j)[0] for j in jobs}
    wait_until(lambda: idle_pids() == hosts, timeout=10, what="both hosts idle")
    assert enb.shutdown() == 2
    assert not any(alive(p) for p in hosts) and not enb.hosts() and not job_processes()


def test_kill_node_kills_its_host_and_the_next_launch_starts_a_new_one(fresh_pool):
    job = enb.launch(scenarios.wait_forever, nproc=1, keep_warm=60)
    job.wait_until(lambda: "waiting" in job.logs(), timeout=60, what="the rank")
    host, _ = host_of(job)
    job.kill_node(0)
    assert not alive(host)
    job.wait(timeout=30)
    again = enb.launch(scenarios.rank, nproc=1, keep_warm=0)
    new_host, warm = host_of(again)
    assert new_host != host and not warm
    assert again.result(timeout=120) == {0: 0}


def test_an_idle_host_dies_with_its_kernel(tmp_path):
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import elastic_nb as enb, scenarios
        job = enb.launch(scenarios.rank, nproc=2, keep_warm=600)
        job.result()
        while not [h for h in enb.hosts() if h.state == "idle"]:
            time.sleep(0.05)
        print(*[h.pid for h in enb.hosts()], flush=True)
        time.sleep(300)
    """))
    kernel = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        (host,) = map(int, kernel.stdout.readline().split())
        assert alive(host) and len(psutil.Process(host).children()) >= 1  # its forkserver
        kernel.send_signal(signal.SIGKILL)
        kernel.wait()
        wait_until(lambda: not job_processes(kernel_pid=kernel.pid), timeout=15,
                   what="the dead kernel's idle host and its forkserver to exit")
    finally:
        kernel.kill()
        kernel.wait()


def test_keep_warm_must_be_a_number_of_seconds():
    with pytest.raises(enb.LaunchError, match="keep_warm"):
        enb.launch(scenarios.rank, nproc=1, keep_warm=-1)
    with pytest.raises(ValueError, match="keep_warm must be a number of seconds >= 0"):
        enb.set_keep_warm("long")


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_64_ranks_on_one_box_all_reduce_return_and_tear_down(fresh_pool, warm):
    if warm:  # a host that has served a job already, its forkserver up
        assert enb.run(scenarios.rank, nproc=1, keep_warm=60) == {0: 0}
    job = enb.launch(scenarios.dist_sum, nproc=64, keep_warm=0, rdzv_timeout=300)
    assert job.result(timeout=600) == {r: sum(range(64)) for r in range(64)}
    assert host_of(job)[1] == warm
    wait_until(lambda: not job_processes(), timeout=60, what="64 workers and the host to exit")


def test_on_warm_hosts_node_0_still_has_the_first_ranks(fresh_pool):
    """torch ranks one machine's nodes by their agents' pids: hosts are taken in pid order,
    new ones after them, so ranks follow node indexes as in a cold launch."""
    for _ in range(3):
        job = enb.launch(scenarios.role_info, nodes=[enb.Node(1), enb.Node(2)], keep_warm=60)
        job.result(timeout=120)
        assert sorted((w.node, w.rank) for w in job.workers) == [(0, 0), (1, 1), (1, 2)]
        hosts = [n.host_pid for n in job.snapshot().nodes]
        wait_until(lambda h=hosts: set(h) <= idle_pids(), timeout=10, what="both hosts idle")
    assert all(n.warm for n in job.snapshot().nodes)


def test_workers_are_the_whole_world_when_ranks_return_at_once(rdzv):
    """A node of one rank starts and returns before a node of four has reported its start:
    ``job.workers`` is still the world's every rank, once each, as its own environment
    tells, the finished nodes' included (twice: the second job on the first one's hosts)."""
    nodes = [enb.Node(4, role="master"), enb.Node(1), enb.Node(2), enb.Node(1, role="ps")]
    for _ in range(2):
        job = enb.launch(scenarios.torchrun_env, nodes=nodes, keep_warm=60, **rdzv)
        results = job.result(timeout=120)
        assert sorted(results) == list(range(8))
        workers = job.workers
        assert {w.rank: (w.role, w.local_rank, w.group_rank, w.world_size) for w in workers} == {
            rank: (env["ROLE_NAME"], int(env["LOCAL_RANK"]), int(env["GROUP_RANK"]),
                   int(env["WORLD_SIZE"])) for rank, env in results.items()}
        assert sorted(w.node for w in workers) == [0, 0, 0, 0, 1, 2, 2, 3]
        assert {w.state for w in workers} == {"succeeded"}
        assert len({w.round for w in workers}) == 1, "one world"


def _hosts_idle(pids: list[int]) -> None:
    wait_until(lambda: set(pids) <= {h.pid for h in enb.hosts() if h.state == "idle"},
               timeout=15, what="the hosts idle")


@pytest.mark.slow
@pytest.mark.parametrize("first", enb.BACKENDS)
def test_every_backend_runs_on_hosts_a_scale_up_of_any_backend_left(request, fresh_pool, first):
    """A scale-up on one backend, then a two-node job of every backend on the same warm hosts:
    nothing of a job (its rendezvous, its signal handlers, its environment) reaches the next."""
    def rdzv(backend: str) -> dict:
        if backend == "c10d":
            return {"backend": "c10d", "start_method": "spawn"}
        server = request.getfixturevalue("etcd_v3_server" if backend == "etcd3" else "etcd_v2_server")
        return {"backend": backend, "endpoint": server.endpoint, "start_method": "forkserver"}

    grown = enb.launch(scenarios.elastic_steps, 3, 0.05, 2, nproc=1, min_nodes=1, max_nodes=2,
                       keep_warm=60, **rdzv(first))
    grown.wait_until(lambda: "step 0 world 1" in grown.logs(), timeout=90, what="a world of 1")
    grown.add_node(enb.Node(1))
    assert grown.result(timeout=120) == {r: {"world_size": 2, "restart_count": 0} for r in (0, 1)}
    hosts = [n.host_pid for n in grown.snapshot().nodes]
    for backend in enb.BACKENDS:  # the first right after the scale-up, each after the last
        _hosts_idle(hosts)
        job = enb.launch(scenarios.dist_sum, nodes=[enb.Node(1), enb.Node(1)], keep_warm=60,
                         rdzv_timeout=60, **rdzv(backend))
        assert job.result(timeout=120) == {0: 1, 1: 1}, f"{backend} after a {first} scale-up"
        assert [(n.host_pid, n.warm) for n in job.snapshot().nodes] == [(h, True) for h in hosts]
