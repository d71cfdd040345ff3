"""The fault matrix: a fault at every moment of a job ends in a defined outcome, in bounded time.

Two nodes of one rank each (min 1, max 2 nodes, one restart allowed) run
``scenarios.held_at``, whose node-1 rank holds the others at the moment under
test. A fault lands there, at once: for the moments a report marks
(``rendezvous``, ``worker_start``) from the Job's own listener as the report
arrives; for the others as soon as the ranks' output says they are there.
Each cell checks the events (which kinds, in which order), the final state,
the results or the failure, how long the outcome took, and (the autouse
fixture) that no process of the job is left.

Measured times are printed (``-s``) as ``FAULT-MATRIX`` lines; the README's
reliability section quotes them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil
import pytest
import scenarios
from faults import BOUND, MOMENTS, at_moment, kinds, launch, outcome_time, report

import elastic_nb as enb


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("moment", MOMENTS)
def test_a_lost_node_leaves_the_survivor_to_finish_without_spending_the_budget(tmp_path, moment,
                                                                                rdzv):
    job = launch(tmp_path, moment, **rdzv)
    try:
        struck = at_moment(job, moment, lambda: job.kill_node(1))
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    world = 2 if moment == "exit_barrier" else 1
    assert results == {0: {"world_size": world, "restart_count": 0}}
    assert job.nodes == {0: "succeeded", 1: "killed"}
    assert "worker_failed" not in kinds(job), "a lost peer is no failure of the survivor's"
    reasons = [e.detail["reason"] for e in job.events if e.kind == "restarting"]
    assert set(reasons) <= {"membership"}
    if moment not in ("launch", "exit_barrier"):
        assert reasons, "the survivor re-formed the world at once"
        assert kinds(job).index("node_killed") < kinds(job).index("restarting")
    assert took < BOUND
    report("kill node", moment, rdzv["backend"], took, f"succeeded, world {world}")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGSEGV"])
@pytest.mark.parametrize("moment", ["worker_start", "init_process_group", "in_collective",
                                    "between_collectives"])
def test_a_killed_rank_restarts_the_group_once(tmp_path, moment, sig, rdzv):
    job = launch(tmp_path, moment, **rdzv)
    try:
        struck = at_moment(job, moment, lambda: job.kill(1, sig))
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    # Restart counts are per agent, as in torch: node 1 spent one; node 0 spent one only if
    # its own rank's failure reached its agent first (inside a collective gloo sees the dead
    # peer at once, and the rank exits), else it re-formed by a membership restart when node 1
    # came back to the rendezvous: both are torch's rules, and which comes first is a race.
    survivor_restarts = results[0]["restart_count"]
    assert survivor_restarts in ((0, 1) if moment == "in_collective" else (0,))
    assert results == {0: {"world_size": 2, "restart_count": survivor_restarts},
                       1: {"world_size": 2, "restart_count": 1}}
    failed = [e for e in job.events if e.kind == "worker_failed"]
    # inside a collective, node 0 may report its rank's failure before node 1 reports rank 1's
    assert sorted(e.rank for e in failed) == [0] * survivor_restarts + [1]
    victim = next(e for e in failed if e.rank == 1)
    assert victim.detail["signal"] == sig and sig in victim.detail["message"]
    order = kinds(job)
    assert order.index("killed") < order.index("worker_failed") < order.index("restarting")
    assert job.snapshot().restart_count == 1
    assert took < BOUND
    report(f"kill {sig}", moment, rdzv["backend"], took, "succeeded after 1 restart")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("moment", MOMENTS)
def test_stop_ends_everything_at_any_moment(tmp_path, moment, rdzv):
    job = launch(tmp_path, moment, **rdzv)
    stopper: list[threading.Thread] = []

    def stop_in_background() -> None:  # job.stop blocks; a listener must not
        stopper.append(threading.Thread(target=job.stop))
        stopper[0].start()

    struck = at_moment(job, moment, stop_in_background)
    stopper[0].join(timeout=BOUND)
    took = outcome_time(job, struck)
    assert job.state == "stopped" or (moment == "exit_barrier" and job.state == "succeeded")
    assert all(status in ("stopped", "succeeded", "killed") for status in job.nodes.values())
    assert took < BOUND
    report("stop", moment, rdzv["backend"], took, str(job.state))


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("moment", ["worker_start", "init_process_group", "in_collective",
                                    "between_collectives"])
def test_a_user_restart_starts_a_new_attempt_without_spending_the_budget(tmp_path, moment,
                                                                          rdzv):
    job = launch(tmp_path, moment, **rdzv)
    try:
        struck = at_moment(job, moment, job.restart)
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    assert results == {r: {"world_size": 2, "restart_count": 0} for r in (0, 1)}
    assert "user" in [e.detail["reason"] for e in job.events if e.kind == "restarting"]
    assert "worker_failed" not in kinds(job)
    assert took < BOUND
    report("restart", moment, rdzv["backend"], took, "succeeded, attempt 1")


@pytest.mark.slow
@pytest.mark.parametrize("fault, moment", [("kill node", "init_process_group"),
                                           ("kill node", "in_collective"),
                                           ("freeze node", "in_collective"),
                                           ("kill SIGKILL", "in_collective"),
                                           ("stop", "between_collectives")])
@pytest.mark.parametrize("backend_name", ["etcd", "etcd-v2"])
def test_torchs_etcd_backends_on_a_representative_subset(tmp_path, fault, moment, backend_name,
                                                         etcd_v2_server):
    job = launch(tmp_path, moment, backend=backend_name, endpoint=etcd_v2_server.endpoint,
                 liveness_timeout=3)
    strikes = {"kill node": lambda: job.kill_node(1), "kill SIGKILL": lambda: job.kill(1),
               "freeze node": lambda: job.freeze_node(1),
               "stop": lambda: threading.Thread(target=job.stop).start()}
    try:
        struck = at_moment(job, moment, strikes[fault])
        took = outcome_time(job, struck)
    finally:
        job.stop()
    if fault == "stop":
        assert job.state == "stopped"
    else:
        results = job.result()
        if fault in ("kill node", "freeze node"):
            assert results == {0: {"world_size": 1, "restart_count": 0}}
            assert "worker_failed" not in kinds(job)
            assert fault == "kill node" or job.nodes[1] == "lost"  # the etcd v1 handler has no
            # heartbeat state to read: the channel's liveness is what finds the frozen node
        else:
            assert results[1] == {"world_size": 2, "restart_count": 1}
    assert took < BOUND
    report(fault, moment, backend_name, took, str(job.state))


TORCHRUN_PEER = """
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
print(f"torchrun peer rank {os.environ['RANK']} world {dist.get_world_size()}", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_a_lost_torchrun_peer_is_noticed_by_its_heartbeat(tmp_path, rdzv, fault):
    """A plain torchrun node (no channel to the Job) dies, or freezes, while the job's rank
    computes: no collective notices; the lapsed rendezvous heartbeat makes the survivor
    re-form."""
    script = tmp_path / "peer.py"
    script.write_text(TORCHRUN_PEER)
    job = enb.launch(scenarios.compute_once_grown, str(tmp_path / "grown"), nproc=1, min_nodes=1,
                     max_nodes=2, max_restarts=0, trust_store=True,  # a plain torchrun node
                     **{**rdzv, "start_method": "forkserver"})
    conf = "keep_alive_interval=1,keep_alive_max_attempt=3"
    if job.backend == "c10d":
        conf += ",is_host=false"  # the Job hosts the store
    peer = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc-per-node", "1",
         "--rdzv-backend", job.backend, "--rdzv-endpoint", job.endpoint, "--rdzv-id", job.run_id,
         "--rdzv-conf", conf, "--max-restarts", "0", "--monitor-interval", "0.1", str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree: list[psutil.Process] = []
    try:
        job.wait_until(lambda: "phase computing world 2" in job.logs(rank=0), timeout=120,
                       what="rank 0 computing in a world of 2")
        tree = [psutil.Process(peer.pid), *psutil.Process(peer.pid).children(recursive=True)]
        restarts_before = kinds(job).count("restarting")
        struck = time.time()
        for proc in tree:  # the machine is gone, or hangs: torchrun's agent and its workers
            if fault == "kill":
                proc.kill()
            else:
                proc.suspend()
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if peer.poll() is None:
            peer.kill()
        peer.communicate()
    assert results == {0: {"world_size": 1, "restart_count": 0}}
    assert "worker_failed" not in kinds(job), "a lost peer is no failure of the survivor's"
    reasons = [e.detail["reason"] for e in job.events if e.kind == "restarting"]
    assert set(reasons) == {"membership"} and len(reasons) == restarts_before + 1
    assert took < BOUND
    report(f"{fault} torchrun node", "between_collectives", rdzv["backend"], took,
           "succeeded, world 1 (heartbeat)")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_a_loss_below_min_nodes_fails_the_job_naming_the_lost_node(tmp_path, rdzv):
    """min_nodes = 2: the survivor waits for a replacement for rdzv_timeout, then the job
    fails, and the error says which node was lost."""
    job = enb.launch(scenarios.held_at, "between_collectives", str(tmp_path),
                     nodes=[enb.Node(1), enb.Node(1)], min_nodes=2, max_nodes=2, rdzv_timeout=10,
                     **{**rdzv, "start_method": "forkserver"})
    try:
        struck = at_moment(job, "between_collectives", lambda: job.kill_node(1))
        took = outcome_time(job, struck)
    finally:
        job.stop()
    assert job.state == "failed"
    assert job.nodes == {0: "failed", 1: "killed"}
    error = next(e for e in job.events if e.kind == "failed").detail["error"]
    assert "after losing node 1 killed" in error
    assert "worker_failed" not in kinds(job)
    assert took < 10 + BOUND
    report("kill node", "below min_nodes", rdzv["backend"], took, "failed, names node 1")


def test_faults_after_results_change_nothing_and_say_why(tmp_path):
    """Once the job has succeeded, every command is refused with a reason, or (stop) a no-op."""
    job = enb.launch(scenarios.held_at, "none", str(tmp_path), nodes=[enb.Node(1), enb.Node(1)],
                     start_method="forkserver")
    results = job.result(timeout=120)
    with pytest.raises(ValueError, match=r"rank 1 is not running \(state: succeeded\)"):
        job.kill(1)
    with pytest.raises(ValueError, match=r"node 1 is not running \(status: succeeded\)"):
        job.kill_node(1)
    with pytest.raises(RuntimeError, match="has already succeeded"):
        job.restart()
    with pytest.raises(RuntimeError, match="has already succeeded"):
        job.add_node(enb.Node(1))
    job.stop()
    assert job.state == "succeeded" and job.result() == results
    assert results == {r: {"world_size": 2, "restart_count": 0} for r in (0, 1)}
    finals = [k for k in kinds(job) if k in ("succeeded", "failed", "stopped")]
    assert finals == ["succeeded"]


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_a_rank_killed_while_its_peer_waits_in_the_exit_barrier_gives_one_worlds_results(
        tmp_path, rdzv):
    """Node 0 returned and waits in torch's exit barrier; node 1's rank is killed and its node
    re-forms alone, a world of 1. The results are that world's, all of them: never node 0's
    rank 0 of the world of 2 beside node 1's rank 0 of the world of 1."""
    job = launch(tmp_path, "exit_barrier", **rdzv)
    try:
        struck = at_moment(job, "exit_barrier", lambda: job.kill(1))
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    assert results == {0: {"world_size": 1, "restart_count": 1}}
    assert took < BOUND
    report("kill SIGKILL", "exit_barrier", rdzv["backend"], took, "succeeded, world 1's results")
