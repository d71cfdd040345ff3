"""Membership changes on a running job: a node dies, a node joins, the job carries on."""

from __future__ import annotations

import pytest
import scenarios
from util import alive, leftover_processes, wait_until

import elastic_nb as enb


def _kinds(job: enb.Job) -> list[str]:
    return [e.kind for e in job.events]


def test_double_agent_elastic(rdzv):
    """Two nodes of 2 (min 1, max 2); node 1 dies mid-run; node 0 alone re-forms a world of 2.

    The loss costs no restart: node 0 re-forms by a membership restart.
    """
    job = enb.launch(scenarios.elastic_steps, 30, 0.1, nodes=[enb.Node(2), enb.Node(2)],
                     min_nodes=1, max_nodes=2, max_restarts=2, **rdzv)
    wait_until(lambda: "step 2 world 4" in job.logs(), timeout=90, what="a world of 4 to run")
    doomed = [w.pid for w in job.workers if w.node == 1]
    job.kill_node(1)
    results = job.result(timeout=120)
    assert results == {r: {"world_size": 2, "restart_count": 0} for r in (0, 1)}
    assert [e.detail["reason"] for e in job.events if e.kind == "restarting"] == ["membership"]
    assert not any(alive(pid) for pid in doomed)
    kinds = _kinds(job)
    assert kinds.index("node_killed") < kinds.index("membership_changed")
    changed = next(e for e in job.events if e.kind == "membership_changed")
    assert changed.detail == {"nodes": 1, "world_size": 2, "previous_nodes": 2, "members": [0],
                              "joined": [], "left": [1]}
    assert job.nodes == {0: "succeeded", 1: "killed"}


def test_double_agent_fault_tolerance(rdzv):
    """min = max = 2: node 1 dies, a replacement is added, a world of 4 succeeds."""
    job = enb.launch(scenarios.elastic_steps, 20, 0.1, nodes=[enb.Node(2), enb.Node(2)],
                     max_restarts=2, **rdzv)
    wait_until(lambda: "step 2 world 4" in job.logs(), timeout=90, what="a world of 4 to run")
    job.kill_node(1)
    wait_until(lambda: "restarting" in _kinds(job), timeout=60, what="node 0 to restart")
    assert job.add_node(enb.Node(2)) == 2
    results = job.result(timeout=180)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(v["world_size"] == 4 for v in results.values())
    assert {w.node for w in job.workers} == {0, 2}
    assert job.nodes == {0: "succeeded", 1: "killed", 2: "succeeded"}
    assert "node_added" in _kinds(job)


def test_scale_up_joins_a_running_node(rdzv):
    """One node of 2 running (min 1, max 2); a second joins; both re-form a world of 4."""
    job = enb.launch(scenarios.elastic_steps, 5, 0.1, 4, nproc=2, min_nodes=1, max_nodes=2,
                     **rdzv)
    wait_until(lambda: "step 2 world 2" in job.logs(), timeout=90, what="a world of 2 to run")
    job.add_node(enb.Node(2))
    results = job.result(timeout=180)
    assert results == {r: {"world_size": 4, "restart_count": 0} for r in range(4)}
    restart = next(e for e in job.events if e.kind == "restarting")
    assert restart.detail["reason"] == "membership"
    assert restart.detail["remaining_restarts"] == 0  # membership changes cost no restart
    assert "[default3]:step 4 world 4" in job.logs()


def test_membership_controls_reject_what_cannot_be_done(rdzv):
    job = enb.launch(scenarios.sleep, 60, nproc=1, max_nodes=1, **rdzv)
    try:
        wait_until(lambda: job.state == "running", timeout=60, what="the job to run")
        with pytest.raises(ValueError, match="already has max_nodes=1 live nodes"):
            job.add_node(enb.Node(1))
        with pytest.raises(ValueError, match=r"node 3 is not running .* live nodes: \[0\]"):
            job.kill_node(3)
        job.kill_node(0)
        assert job.wait(timeout=30) == "failed"
        failed = next(e for e in job.events if e.kind == "failed")
        assert failed.detail["error"] == "every node was killed"
        with pytest.raises(enb.JobFailed, match="every node was killed"):
            job.result()
    finally:
        job.stop()
    assert not leftover_processes()
