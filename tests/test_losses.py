"""One rule for a lost machine (``model.losses``): the rules without processes, then a host
killed from a shell at the moments a survivor's collective breaks on it."""

from __future__ import annotations

import os
import signal

import pytest
import scenarios
from faults import at_moment, kinds, outcome_time, report
from test_state import T0, job, started

import elastic_nb as enb
from elastic_nb.model import losses, rules
from elastic_nb.model.state import EventKind, NodeStatus
from elastic_nb.wire import reports as protocol

GLOO_CLOSED = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
               "[127.0.0.1]:33127")


def failure(rank: int, message: str, signal: str | None = None) -> protocol.FailureReport:
    return protocol.FailureReport(rank=rank, local_rank=0, pid=100 + rank, exitcode=1,
                                  signal=signal, message=message, traceback=None,
                                  timestamp=T0 + 2, restart_count=0)


def test_a_failure_may_follow_a_loss_only_if_every_rank_lost_a_peer():
    assert losses.may_follow_a_peer_loss([GLOO_CLOSED, "Connection reset by peer"])
    assert not losses.may_follow_a_peer_loss([GLOO_CLOSED, "ValueError: bad batch"])
    assert not losses.may_follow_a_peer_loss([])
    assert losses.failed_on_its_own(False, [None, "SIGKILL"], [False, True])
    assert not losses.failed_on_its_own(False, ["SIGTERM"], [False])  # the scheduler's, maybe
    assert not losses.failed_on_its_own(True, [None], [False])


def two_nodes_in_round_4():
    state = job(1, 1, local=False)
    started(state, 0, 0, round=4)
    started(state, 1, 1, round=4)
    return state


def test_a_held_failure_then_the_loss_is_a_membership_restart_that_names_the_loss():
    state = two_nodes_in_round_4()
    held = protocol.WorkerFailed(0, 0, T0 + 2, (failure(0, GLOO_CLOSED),), held=True)
    rules.apply(state, 0, held, T0 + 2)
    assert state.holding == {0: 4} and rules.release_held(state, 0, held) == []
    rules.node_gone(state, 1, -9, T0 + 3, "see its agent log")
    assert state.nodes[1].status == NodeStatus.LOST
    events = rules.apply(state, 0, protocol.Restarting("membership", 0, 0, T0 + 3.5), T0 + 3.5)
    restarting = [e for e in events if e.kind == EventKind.RESTARTING][0]
    assert restarting.detail["followed_from"].startswith("node 1 exited")
    assert "node 0's ranks followed from it" in restarting.detail["followed_from"]
    assert state.holding == {} and not state.done


def test_a_loss_found_by_silence_keeps_its_name_when_the_fenced_agent_exits_after():
    """Node 1 is found silent (lost), fenced, and its channel closes before the survivor's
    restart: the restart names the loss as the timeline first said it, not its aftermath."""
    state = two_nodes_in_round_4()
    held = protocol.WorkerFailed(0, 0, T0 + 2, (failure(0, GLOO_CLOSED),), held=True)
    rules.apply(state, 0, held, T0 + 2)
    rules.node_silent(state, 1, 6.0, T0 + 8)
    rules.node_gone(state, 1, -9, T0 + 8.2, "see its agent log")
    events = rules.apply(state, 0, protocol.Restarting("membership", 0, 0, T0 + 8.5), T0 + 8.5)
    restarting = [e for e in events if e.kind == EventKind.RESTARTING][0]
    assert restarting.detail["followed_from"].startswith("node 1 lost"), restarting.detail


def test_a_node_s_own_failure_releases_the_holders_of_its_world_whichever_comes_first():
    state = two_nodes_in_round_4()
    held = protocol.WorkerFailed(0, 0, T0 + 2, (failure(0, GLOO_CLOSED),), held=True)
    own = protocol.WorkerFailed(0, 0, T0 + 2, (failure(1, "ValueError: bad batch"),))
    rules.apply(state, 0, held, T0 + 2)
    rules.apply(state, 1, own, T0 + 2.1)
    assert rules.release_held(state, 1, own) == [0] and state.holding == {}
    later = two_nodes_in_round_4()  # the own failure is heard first: the holder is released
    rules.apply(later, 1, own, T0 + 2)
    assert rules.release_held(later, 1, own) == []
    rules.apply(later, 0, held, T0 + 2.1)
    assert rules.release_held(later, 0, held) == [0]


def test_a_rank_killed_from_outside_releases_nobody():
    """A rank that died of SIGTERM the user did not send (its machine being ended) may be the
    loss itself: the holder waits for the loss, not for a release."""
    state = two_nodes_in_round_4()
    rules.apply(state, 0, protocol.WorkerFailed(0, 0, T0 + 2, (failure(0, GLOO_CLOSED),),
                                                held=True), T0 + 2)
    sigterm = protocol.WorkerFailed(0, 0, T0 + 2, (failure(1, "killed by SIGTERM", "SIGTERM"),))
    rules.apply(state, 1, sigterm, T0 + 2.1)
    assert rules.release_held(state, 1, sigterm) == [] and state.holding == {0: 4}


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("moment", ["in_collective", "between_collectives"])
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_host_killed_from_a_shell_is_a_lost_machine_even_with_no_budget(tmp_path, moment, sig,
                                                                           rdzv):
    """``kill -SIG -PGID`` of node 1's host (its agent and ranks at once; SIGTERM is what Slurm's
    scancel sends): whether the survivor's broken collective or the Job notices first, node 1
    is lost and the survivor finishes in a world of 1 with max_restarts=0; a survivor
    failure, if any, is attributed to the loss."""
    job = enb.launch(scenarios.held_at, moment, str(tmp_path), nodes=[enb.Node(1), enb.Node(1)],
                     min_nodes=1, max_nodes=2, max_restarts=0,
                     **{**rdzv, "start_method": "forkserver"})
    try:
        host = job.snapshot().nodes[1].host_pid
        struck = at_moment(job, moment, lambda: os.killpg(os.getpgid(host), signal.Signals[sig]))
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    assert results == {0: {"world_size": 1, "restart_count": 0}}
    assert job.nodes[0] == "succeeded" and job.nodes[1] == "lost"
    restarts = [e.detail for e in job.events if e.kind == "restarting"]
    assert restarts and all(d["reason"] == "membership" for d in restarts)
    survivor_failures = [e for e in job.events if e.kind == "worker_failed" and e.node == 0]
    if survivor_failures:  # the broken collective came first: held, then billed to the loss
        assert all("held" in e.detail for e in survivor_failures)
        assert any("followed_from" in d for d in restarts)
    report(f"{sig} host", moment, rdzv["backend"], took,
           f"succeeded, world 1, {'held' if survivor_failures else 'no'} survivor failure")
    assert "failed" not in kinds(job)


@pytest.mark.slow
@pytest.mark.backends("c10d")
def test_a_broken_collective_heard_before_the_loss_is_billed_to_the_loss(tmp_path, rdzv):
    """Node 1's agent hangs (SIGSTOP) and its rank dies: the survivor's all-reduce breaks at
    once, seconds before the Job finds node 1 silent. The survivor holds its failure, the
    loss comes, and it re-forms alone without spending its budget (max_restarts=0)."""
    job = enb.launch(scenarios.held_at, "in_collective", str(tmp_path),
                     nodes=[enb.Node(1), enb.Node(1)], min_nodes=1, max_nodes=2, max_restarts=0,
                     **{**rdzv, "start_method": "forkserver"})
    try:
        host = job.snapshot().nodes[1].host_pid

        def machine_fails() -> None:
            rank1 = next(w.pid for w in job.snapshot().workers if w.node == 1)
            os.kill(host, signal.SIGSTOP)
            os.kill(rank1, signal.SIGKILL)

        struck = at_moment(job, "in_collective", machine_fails)
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    assert results == {0: {"world_size": 1, "restart_count": 0}}
    assert job.nodes == {0: "succeeded", 1: "lost"}
    held = [e for e in job.events if e.kind == "worker_failed" and e.node == 0]
    assert held and all("held" in e.detail for e in held), [str(e) for e in job.events]
    excused = [e.detail for e in job.events if e.kind == "restarting" and e.node == 0]
    assert excused[0]["reason"] == "membership"
    assert excused[0]["followed_from"].startswith("node 1 lost")
    report("agent hung, rank dead", "in_collective", rdzv["backend"], took,
           "succeeded, world 1, the survivor's failure billed to the loss")
