"""The Job's state rules, without a process: reports in, state and events out.

Like torch's rendezvous op tests, each case builds a state, applies reports
and commands, and checks the result; the whole file runs in milliseconds.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from elastic_nb.model import controls, rules
from elastic_nb.model.state import EventKind, JobState, JobStatus, NodeStatus, WorkerStatus
from elastic_nb.wire import reports as protocol

T0 = 1000.0


def job(*nproc: int, local: bool = True) -> JobState:
    """A launched job with one node per ``nproc``."""
    state = JobState(started_at=T0)
    for index, n in enumerate(nproc):
        rules.add_node(state, index, n, "trainer", local=local)
    rules.launched(state, T0, {})
    return state


def started(state: JobState, node: int, first_rank: int, attempt: int = 0,
            restart_count: int = 0, world_size: int | None = None, now: float = T0 + 1,
            round: int | None = None, group_rank: int | None = None) -> list:
    """Node ``node`` started its workers, ranks from ``first_rank``, in rendezvous ``round``
    (by default its ``attempt``: a single node's every attempt is a new round)."""
    nproc = state.nodes[node].nproc
    world = world_size or sum(n.nproc for n in state.nodes.values())
    workers = tuple(
        protocol.StartedWorker(rank=first_rank + i, local_rank=i, role_rank=first_rank + i,
                               world_size=world, role_world_size=world, pid=100 * (node + 1) + i,
                               stdout=f"/logs/node_{node}/attempt_{attempt}/{i}/stdout.log",
                               stderr=f"/logs/node_{node}/attempt_{attempt}/{i}/stderr.log",
                               error_file=f"/logs/node_{node}/attempt_{attempt}/{i}/error.json")
        for i in range(nproc))
    return rules.apply(state, node, protocol.Started(
        role="trainer", attempt=attempt, restart_count=restart_count,
        group_rank=node if group_rank is None else group_rank,
        group_world_size=len(state.nodes), observed_at=now, workers=workers,
        round=attempt if round is None else round), now)


def failure(rank: int, timestamp: float, restart_count: int = 0) -> protocol.FailureReport:
    return protocol.FailureReport(rank=rank, local_rank=rank, pid=100 + rank, exitcode=-9,
                                  signal="SIGKILL", message=f"killed rank {rank}", traceback=None,
                                  timestamp=timestamp, restart_count=restart_count)


def kinds(events: list) -> list[str]:
    return [e.kind for e in events]


def test_states_are_str_enums_that_print_as_their_values():
    assert JobStatus.RUNNING == "running" and f"{JobStatus.RUNNING}" == "running"
    assert f"{NodeStatus.KILLED:<8}|" == "killed  |"
    assert str(EventKind.WORKER_FAILED) == "worker_failed"
    assert EventKind.FAILED is not protocol.ReportKind.FAILED  # a final event is not a report


def test_launch_then_start_runs_the_job():
    state = job(2)
    assert state.status == JobStatus.RENDEZVOUS
    assert kinds(started(state, 0, 0)) == ["started"]
    assert state.status == JobStatus.RUNNING
    assert state.nodes[0].status == NodeStatus.RUNNING
    assert [(w.rank, w.state, w.started_at, w.rank_dir) for w in state.workers.values()] == [
        (0, WorkerStatus.RUNNING, T0 + 1, "/logs/node_0/attempt_0/0"),
        (1, WorkerStatus.RUNNING, T0 + 1, "/logs/node_0/attempt_0/1")]


def test_success_of_every_node_ends_the_job_with_its_results():
    state = job(1, 1)
    started(state, 0, 0)
    started(state, 1, 1)
    assert rules.apply(state, 0, protocol.Succeeded(0, {0: b"zero"}), T0 + 2) == []
    events = rules.apply(state, 1, protocol.Succeeded(0, {1: b"one"}), T0 + 3)
    assert kinds(events) == ["succeeded"] and events[0].detail == {"elapsed": 3.0}
    assert state.status == JobStatus.SUCCEEDED and state.finished_at == T0 + 3
    assert state.results == {0: b"zero", 1: b"one"}
    assert {w.state for w in state.workers.values()} == {WorkerStatus.SUCCEEDED}


@pytest.mark.parametrize("final_status, expected", [
    (JobStatus.SUCCEEDED, ["rendezvous"]),
    (JobStatus.FAILED, ["rendezvous"]),
    (JobStatus.STOPPED, ["rendezvous"]),
])
def test_a_final_state_is_never_left(final_status, expected):
    state = job(1)
    rules.finish(state, final_status, T0 + 1)
    events = rules.apply(state, 0, protocol.Rendezvous(0, 1, 1, None, None), T0 + 2)
    assert kinds(events) == expected
    assert rules.finish(state, JobStatus.RUNNING, T0 + 3) == []
    assert state.status == final_status


def test_a_local_agent_dates_its_events_by_what_it_saw_and_a_remote_one_by_arrival():
    state = job(1)
    started(state, 0, 0)
    controls.node_added(state, 1, 1, "trainer", local=False, host="hostb", now=T0 + 1)
    # the local agent saw the failure at +2 and began the restart at +2.1; both reports
    # arrive at +3 (a busy pump): the timeline keeps what the agent saw, in that order
    failed = rules.apply(state, 0, protocol.WorkerFailed(0, 2, T0 + 2, (failure(0, T0 + 2),)),
                         T0 + 3)
    restarting = rules.apply(state, 0, protocol.Restarting("failure", 1, 2, T0 + 2.1), T0 + 3)
    assert [e.time for e in failed + restarting] == [T0 + 2, T0 + 2.1]
    # a clock ahead of ours never dates an event in the future
    assert rules.apply(state, 0, protocol.Restarting("user", 1, 2, T0 + 9), T0 + 4)[0].time == T0 + 4
    # another machine's clock is not ours: its reports are dated on arrival
    remote = rules.apply(state, 1, protocol.Restarting("failure", 1, 2, T0 - 50), T0 + 5)
    assert remote[0].time == T0 + 5


def test_a_worker_failure_carries_its_failure_and_restart_marks_the_group():
    state = job(2)
    started(state, 0, 0)
    events = rules.apply(state, 0, protocol.WorkerFailed(0, 2, T0 + 2, (failure(1, T0 + 2),)), T0 + 2)
    assert kinds(events) == ["worker_failed"]
    assert events[0].rank == 1 and events[0].failures[0].message == "killed rank 1"
    assert state.workers[1].state == WorkerStatus.FAILED
    events = rules.apply(state, 0, protocol.Restarting("failure", 1, 2, T0 + 3), T0 + 3)
    assert kinds(events) == ["restarting"] and state.status == JobStatus.RESTARTING
    assert [w.state for w in state.workers.values()] == [WorkerStatus.RESTARTING,
                                                          WorkerStatus.FAILED]
    started(state, 0, 0, attempt=1, restart_count=1, now=T0 + 4)
    assert state.status == JobStatus.RUNNING and state.restart_count == 1
    assert [(w.attempt, w.started_at) for w in state.workers.values()] == [(1, T0 + 4)] * 2
    assert len(state.failure_history) == 1


def test_the_final_failure_names_the_first_rank_that_failed():
    state = job(3)
    started(state, 0, 0)
    events = rules.apply(state, 0, protocol.Failed((failure(2, T0 + 5), failure(0, T0 + 3),
                                                    failure(1, T0 + 3))), T0 + 6)
    assert kinds(events) == ["failed"]
    assert events[0].detail["error"] == "rank 0 (node 0, trainer) failed: killed rank 0"
    assert [f.rank for f in events[0].failures] == [0, 1, 2]
    assert state.first_failure().rank == 0


def test_in_the_same_second_a_rank_that_raised_comes_before_the_collective_it_broke():
    state = job(1, 1)
    started(state, 0, 0)
    started(state, 1, 1)
    broken = protocol.FailureReport(
        rank=0, local_rank=0, pid=100, exitcode=1, signal=None, traceback=None,
        message="RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer",
        timestamp=T0 + 3, restart_count=0)
    raised = protocol.FailureReport(
        rank=1, local_rank=0, pid=101, exitcode=1, signal=None, traceback=None,
        message="ValueError: rank 1 gives up", timestamp=T0 + 3, restart_count=0)
    rules.apply(state, 0, protocol.Failed((broken,)), T0 + 4)  # the consequence reported first
    rules.apply(state, 1, protocol.Failed((raised,)), T0 + 4)
    assert state.first_failure().rank == 1
    later = replace(raised, timestamp=T0 + 4)  # a second later it is not the cause
    rules.apply(state, 1, protocol.Failed((later,)), T0 + 5)
    assert state.first_failure().rank == 0


def test_a_failed_node_fails_the_job_and_marks_the_others_to_stop():
    state = job(1, 1)
    started(state, 0, 0)
    started(state, 1, 1)
    events = rules.apply(state, 1, protocol.Failed((failure(1, T0 + 2),)), T0 + 2)
    assert kinds(events) == ["failed"]
    assert (state.nodes[0].stopping, state.nodes[1].stopping) == (True, False)
    events = rules.node_gone(state, 0, -15, T0 + 3, "see agent.log")
    assert state.nodes[0].status == NodeStatus.STOPPED
    assert kinds(events) == ["node_exited"] and events[0].detail["status"] == "stopped"
    assert state.workers[0].state == WorkerStatus.STOPPED
    assert state.error is None, "a node the Job stopped is no error of its own"


def test_the_last_node_lost_fails_the_job_saying_where_to_look():
    state = job(1)
    started(state, 0, 0)
    events = rules.node_gone(state, 0, 1, T0 + 2, "see /logs/node_0/agent.log")
    assert kinds(events) == ["node_exited", "failed"]
    assert state.nodes[0].status == NodeStatus.LOST
    assert rules.survivors(state, 0) == []
    assert events[1].detail["error"] == ("no node is left: node 0 lost (the agent of node 0 exited "
                                         "unexpectedly (exit code 1); see /logs/node_0/agent.log)")


@pytest.mark.parametrize("how", ["agent_died", "killed", "dropped"])
def test_a_lost_node_leaves_the_survivors_to_re_form(how):
    state = job(1, 1, 1)
    started(state, 0, 0)
    started(state, 1, 1)
    if how == "agent_died":
        rules.node_gone(state, 1, -9, T0 + 2, "see agent.log")
    elif how == "killed":
        controls.node_killed(state, 1, T0 + 2)
    else:
        rules.agent_error(state, 1, "bad message", T0 + 2, drop=True)
    assert rules.survivors(state, 1) == [0, 2]
    assert state.status == JobStatus.RUNNING and state.error is None


def test_nobody_restarts_for_a_node_that_was_in_no_round():
    state = job(1, 1)
    started(state, 0, 0)
    controls.node_added(state, 2, 1, "trainer", local=False, host="mallory", now=T0 + 2)
    rules.agent_error(state, 2, "bad message", T0 + 3, drop=True)  # dropped before any round
    assert rules.survivors(state, 2) == []
    rules.apply(state, 1, protocol.Rendezvous(group_rank=1, group_world_size=2, world_size=2,
                                              master_addr="127.0.0.1", master_port=1), T0 + 4)
    controls.node_killed(state, 1, T0 + 5)  # in a round, before its workers started
    assert rules.survivors(state, 1) == [0]


def test_no_membership_restart_once_the_job_is_stopping():
    state = job(1, 1)
    controls.stop_requested(state, T0 + 1)
    assert rules.survivors(state, 1) == []


def test_an_agent_error_is_an_event_and_fails_the_job():
    state = job(1)
    events = rules.apply(state, 0, protocol.AgentError("no rendezvous", None), T0 + 1)
    assert kinds(events) == ["agent_error", "failed"]
    assert events[1].detail["error"] == "no rendezvous"
    assert state.nodes[0].error == "no rendezvous"


def test_a_survivor_that_cannot_re_form_fails_the_job_naming_the_nodes_lost():
    state = job(1, 1, 1)
    started(state, 0, 0)
    controls.node_killed(state, 1, T0 + 2)
    rules.node_gone(state, 2, -9, T0 + 2, "see /logs/node_2/agent.log")
    events = rules.apply(state, 0, protocol.AgentError("RendezvousTimeoutError: min_nodes=3", None),
                         T0 + 30)
    assert kinds(events) == ["agent_error", "failed"]
    assert events[1].detail["error"] == (
        "RendezvousTimeoutError: min_nodes=3 (after losing node 1 killed; node 2 lost (the agent "
        "of node 2 exited unexpectedly (exit code -9); see /logs/node_2/agent.log))")


def test_a_killed_node_ends_as_killed_not_failed_and_survivors_decide():
    state = job(1, 1)
    started(state, 0, 0)
    started(state, 1, 1)
    assert kinds(controls.node_killed(state, 1, T0 + 2)) == ["node_killed"]
    events = rules.node_gone(state, 1, -9, T0 + 3, "see agent.log")
    assert kinds(events) == ["node_exited"] and events[0].detail["status"] == "killed"
    assert state.status == JobStatus.RUNNING
    rules.apply(state, 0, protocol.Succeeded(0, {0: b"x"}), T0 + 4)
    assert state.status == JobStatus.SUCCEEDED
    assert {i: n.status for i, n in state.nodes.items()} == {0: "succeeded", 1: "killed"}


def test_every_node_killed_fails_the_job():
    state = job(1)
    controls.node_killed(state, 0, T0 + 1)
    events = rules.node_gone(state, 0, -9, T0 + 2, "")
    assert kinds(events) == ["node_exited", "failed"]
    assert events[-1].detail["error"] == "every node was killed"


def test_stop_marks_live_nodes_stopped_as_they_go_then_the_job():
    state = job(1, 1)
    started(state, 0, 0)
    assert controls.stop_requested(state, T0 + 1) == []
    assert all(n.stopping for n in state.nodes.values())
    assert kinds(rules.node_gone(state, 0, -15, T0 + 2, "")) == ["node_exited"]
    assert kinds(rules.node_gone(state, 1, -15, T0 + 3, "")) == ["node_exited", "stopped"]
    assert {n.status for n in state.nodes.values()} == {NodeStatus.STOPPED}
    assert state.status == JobStatus.STOPPED


@pytest.mark.parametrize("command", ["kill_rank", "kill_node"])
def test_commands_on_what_is_not_running_are_refused(command):
    state = job(1)
    started(state, 0, 0)
    rules.apply(state, 0, protocol.Succeeded(0, {0: b"x"}), T0 + 2)
    with pytest.raises(ValueError, match="is not running"):
        if command == "kill_rank":
            controls.rank_killed(state, 0, "SIGKILL", T0 + 3)
        else:
            controls.node_killed(state, 0, T0 + 3)


def test_killing_a_rank_records_its_signal_and_pid():
    state = job(2)
    started(state, 0, 0)
    (event,) = controls.rank_killed(state, 1, "SIGTERM", T0 + 2)
    assert (event.kind, event.rank, event.detail) == ("killed", 1, {"signal": "SIGTERM",
                                                                     "pid": 101})


def test_membership_change_names_who_joined_and_who_left():
    state = job(1, 1)
    for node in (0, 1):
        rules.apply(state, node, protocol.Rendezvous(node, 2, 2, None, None), T0 + 1)
    assert EventKind.MEMBERSHIP_CHANGED not in kinds(state.events)
    controls.node_killed(state, 1, T0 + 2)
    controls.node_added(state, 2, 1, "trainer", local=True, host="localhost", now=T0 + 3)
    rules.apply(state, 2, protocol.Rendezvous(1, 2, 2, None, None), T0 + 4)
    events = rules.apply(state, 0, protocol.Rendezvous(0, 2, 2, None, None), T0 + 4)
    assert kinds(events) == ["rendezvous", "membership_changed"]
    assert {k: events[1].detail[k] for k in ("members", "joined", "left")} == {
        "members": [0, 2], "joined": [2], "left": [1]}


def test_the_live_world_counts_live_nodes_only():
    state = job(2, 2)
    controls.node_killed(state, 1, T0 + 1)
    controls.node_added(state, 2, 3, "trainer", local=False, host="b", now=T0 + 2)
    assert state.live_world_size() == 5
    assert state.live_nodes() == [0, 2]


def test_joining_is_refused_at_max_nodes_and_after_the_end():
    state = job(1, 1)
    assert "max_nodes=2" in controls.check_can_add_node(state, max_nodes=2)
    assert controls.check_can_add_node(state, max_nodes=3) is None
    rules.finish(state, JobStatus.STOPPED, T0 + 1)
    assert controls.check_can_add_node(state, max_nodes=3) == "the job has already stopped"


def test_a_joined_nodes_added_event_names_its_host():
    state = job(1)
    (event,) = controls.node_added(state, 1, 2, "eval", local=False, host="hostb", now=T0 + 1)
    assert event.detail == {"nproc": 2, "role": "eval", "host": "hostb"}
    assert state.nodes[1].local is False


def test_a_joined_node_that_breaks_the_protocol_is_dropped_and_the_job_goes_on():
    state = job(1)
    started(state, 0, 0)
    controls.node_added(state, 1, 1, "trainer", local=False, host="hostb", now=T0 + 1)
    events = rules.agent_error(state, 1, "node 1 sent a bad message: x", T0 + 2, drop=True)
    assert kinds(events) == ["agent_error"] and events[0].detail["dropped"] is True
    assert state.nodes[1].status == NodeStatus.DROPPED and state.status == JobStatus.RUNNING
    assert state.error is None
    rules.node_gone(state, 1, None, T0 + 3, "on hostb")
    assert state.nodes[1].status == NodeStatus.DROPPED
    rules.apply(state, 0, protocol.Succeeded(0, {0: b"x"}), T0 + 4)
    assert state.status == JobStatus.SUCCEEDED


def test_a_local_agent_that_breaks_the_protocol_fails_the_job():
    state = job(1)
    events = rules.agent_error(state, 0, "node 0 sent a bad message: x", T0 + 1)
    assert kinds(events) == ["agent_error", "failed"]
    assert state.nodes[0].status == NodeStatus.FAILED


def test_a_new_attempt_drops_the_workers_of_nodes_that_are_gone():
    state = job(1, 1)
    started(state, 0, 0)
    started(state, 1, 1)
    controls.node_killed(state, 1, T0 + 2)
    rules.node_gone(state, 1, -9, T0 + 3, "")
    assert state.workers[1].state == WorkerStatus.STOPPED
    started(state, 0, 0, attempt=1, world_size=1, now=T0 + 4)
    assert [(w.rank, w.node, w.world_size) for w in state.workers.values()] == [(0, 0, 1)]


def test_a_rank_the_user_killed_is_the_cause_before_the_peer_its_death_took_down():
    state = job(2)
    started(state, 0, 0)
    controls.rank_killed(state, 1, "SIGKILL", T0 + 5.7)
    peer = protocol.FailureReport(rank=0, local_rank=0, pid=100, exitcode=1, signal=None,
                                  message="RuntimeError: Connection closed by peer",
                                  traceback=None, timestamp=T0 + 5, restart_count=0)
    killed = protocol.FailureReport(rank=1, local_rank=1, pid=101, exitcode=-9, signal="SIGKILL",
                                    message="killed by SIGKILL (pid 101)", traceback=None,
                                    timestamp=T0 + 6, restart_count=0)
    # torch stamps whole seconds: the peer's error reads as earlier than the kill
    events = rules.apply(state, 0, protocol.WorkerFailed(0, 1, T0 + 6, (peer, killed)), T0 + 6)
    assert [e.rank for e in events] == [1, 0]
    assert [f.rank for f in state.failure_history] == [1, 0]
    assert state.failure_history[0].by_user and not state.failure_history[1].by_user


def test_a_node_that_finished_keeps_its_workers_of_the_world_listed():
    """Ranks that return at once: a one-rank node starts, returns and reports both before a
    node of four ranks reports its start. The world is every node's, the finished one's too."""
    state = job(4, 1, 2, 3, 2, 1)
    first = [0, 4, 5, 7, 10, 12]
    for node in (5, 1, 2, 4, 3):
        started(state, node, first[node])
        rules.apply(state, node, protocol.Succeeded(0, {
            first[node] + i: b"x" for i in range(state.nodes[node].nproc)}), T0 + 2)
    assert state.nodes[5].status == NodeStatus.SUCCEEDED
    started(state, 0, 0, now=T0 + 3)
    rules.apply(state, 0, protocol.Succeeded(0, {r: b"x" for r in range(4)}), T0 + 4)
    assert state.status == JobStatus.SUCCEEDED
    assert sorted(state.workers) == sorted(state.results) == list(range(13))
    assert {(w.rank, w.node) for w in state.workers.values()} >= {(12, 5), (4, 1), (0, 0)}
    assert {w.state for w in state.workers.values()} == {WorkerStatus.SUCCEEDED}


def test_workers_are_those_of_the_last_world_formed_never_a_mix():
    """Node 0 re-forms alone in round 1; node 1, still live and left out of it, reports its
    start of round 0 late, with ranks that collide with round 1's: none of them is listed."""
    state = job(2, 2)
    started(state, 0, 0, round=0)
    rules.apply(state, 0, protocol.Restarting("membership", 1, 1, T0 + 2), T0 + 2)
    started(state, 0, 0, attempt=1, restart_count=1, world_size=2, round=1, now=T0 + 3)
    assert [(w.rank, w.node, w.world_size) for w in state.workers.values()] == [(0, 0, 2),
                                                                                 (1, 0, 2)]
    events = started(state, 1, 0, world_size=4, round=0, group_rank=1, now=T0 + 4)
    assert [(w.rank, w.node, w.world_size) for w in state.workers.values()] == [(0, 0, 2),
                                                                                 (1, 0, 2)]
    assert events[0].detail["stale"] is True and state.nodes[1].status == NodeStatus.RUNNING
    # a node of the listed world adds its workers; the next world replaces them all
    controls.node_added(state, 2, 2, "trainer", local=True, host="localhost", now=T0 + 5)
    started(state, 2, 2, world_size=4, round=2, group_rank=1, now=T0 + 6)
    assert [(w.rank, w.node) for w in state.workers.values()] == [(2, 2), (3, 2)]
    started(state, 0, 0, attempt=2, restart_count=2, world_size=4, round=2, now=T0 + 7)
    assert sorted((w.rank, w.node, w.round) for w in state.workers.values()) == [
        (0, 0, 2), (1, 0, 2), (2, 2, 2), (3, 2, 2)]


def test_without_a_round_a_start_keeps_the_workers_of_nodes_that_finished():
    state = job(1, 1)
    rules.apply(state, 1, protocol.Started(
        role="trainer", attempt=0, restart_count=0, group_rank=1, group_world_size=2,
        observed_at=T0 + 1, workers=(protocol.StartedWorker(1, 0, 1, 2, 2, 201, "/o", "/e", "/x"),),
        round=None), T0 + 1)
    rules.apply(state, 1, protocol.Succeeded(0, {1: b"x"}), T0 + 2)
    rules.apply(state, 0, protocol.Started(
        role="trainer", attempt=0, restart_count=0, group_rank=0, group_world_size=2,
        observed_at=T0 + 3, workers=(protocol.StartedWorker(0, 0, 0, 2, 2, 101, "/o", "/e", "/x"),),
        round=None), T0 + 3)
    assert sorted(state.workers) == [0, 1]


def rendezvous(state: JobState, node: int, group_rank: int, nodes: int, world: int) -> None:
    rules.apply(state, node, protocol.Rendezvous(group_rank, nodes, world, None, None), T0 + 1)


def test_a_silent_node_is_lost_and_its_survivors_re_form_without_spending_the_budget():
    state = job(1, 1)
    for node in (0, 1):
        rendezvous(state, node, node, 2, 2)
        started(state, node, node)
    events = rules.node_silent(state, 1, 5.2, T0 + 9)
    assert [e.kind for e in events] == [EventKind.NODE_LOST]
    assert events[0].detail == {"silent_for": 5.2, "host": "localhost"}
    assert state.nodes[1].status == NodeStatus.LOST and "went silent" in state.nodes[1].error
    assert state.workers[1].state == WorkerStatus.STOPPED and state.status == JobStatus.RUNNING
    assert rules.survivors(state, 1) == [0]
    assert rules.node_silent(state, 1, 9.0, T0 + 12) == []  # judged once
    # its channel's end, when the fence closes it, changes nothing more
    assert [e.kind for e in rules.node_gone(state, 1, -9, T0 + 13, "")] == [EventKind.NODE_EXITED]
    assert state.nodes[1].status == NodeStatus.LOST


def test_nobody_restarts_for_a_node_the_last_world_formed_without_or_while_re_forming():
    state = job(1, 1, 1)
    for node in (0, 1, 2):
        rendezvous(state, node, node, 3, 3)
        started(state, node, node)
    rules.apply(state, 0, protocol.Restarting("membership", 0, 0, T0 + 2), T0 + 2)
    assert rules.survivors(state, 2) == [1]  # node 0 re-forms already
    for node, group_rank in ((0, 0), (1, 1)):
        rendezvous(state, node, group_rank, 2, 2)  # a world of nodes 0 and 1
    assert state.members == [0, 1] and rules.survivors(state, 2) == []


def test_results_come_from_one_world_the_newest_that_returned():
    """Node 0 finished in round 0 and waits in the exit barrier; node 1's rank failed and it
    re-formed alone in round 1: its results replace node 0's, and a late report of round 0
    adds none."""
    state = job(1, 1)
    started(state, 0, 0, round=0)
    started(state, 1, 1, round=0)
    rules.apply(state, 0, protocol.Succeeded(0, {0: b"world-2 rank 0"}, round=0), T0 + 2)
    assert state.results == {0: b"world-2 rank 0"}
    started(state, 1, 0, attempt=1, world_size=1, round=1, now=T0 + 4)
    rules.apply(state, 1, protocol.Succeeded(0, {0: b"world-1 rank 0"}, round=1), T0 + 5)
    assert state.results == {0: b"world-1 rank 0"} and state.results_round == 1
    rules.apply(state, 0, protocol.Succeeded(0, {0: b"late, round 0"}, round=0), T0 + 6)
    assert state.results == {0: b"world-1 rank 0"}
    assert state.status == JobStatus.SUCCEEDED


def test_a_node_returns_only_the_ranks_it_holds_in_that_round():
    """An admitted node that claims another node's ranks (a forged Succeeded) replaces
    nothing: the claim is refused on the timeline and the holder's results stand."""
    state = job(1, 1, local=False)
    started(state, 0, 0, round=3)
    started(state, 1, 1, round=3)
    rules.apply(state, 0, protocol.Succeeded(0, {0: b"rank 0"}, round=3), T0 + 2)
    events = rules.apply(state, 1, protocol.Succeeded(0, {0: b"forged", 1: b"rank 1"}, round=3),
                         T0 + 3)
    assert state.results == {0: b"rank 0", 1: b"rank 1"}
    refused = [e for e in events if e.kind == EventKind.REPORT_REFUSED]
    assert len(refused) == 1 and refused[0].node == 1 and refused[0].detail["ranks"] == [0]
    higher = rules.apply(state, 1, protocol.Succeeded(0, {0: b"forged", 1: b"x"}, round=9), T0 + 4)
    assert state.results == {0: b"rank 0", 1: b"rank 1"} and state.results_round == 3
    assert [e.detail["ranks"] for e in higher if e.kind == EventKind.REPORT_REFUSED] == [[0, 1]]


def test_freeze_thaw_and_slow_are_events_on_running_ranks_only():
    state = job(2)
    started(state, 0, 0)
    assert [e.kind for e in controls.rank_frozen(state, 1, True, T0 + 2)] == [EventKind.FROZEN]
    assert state.workers[1].frozen and controls.rank_frozen(state, 1, True, T0 + 2) == []
    assert [e.kind for e in controls.rank_frozen(state, 1, False, T0 + 3)] == [EventKind.THAWED]
    events = controls.node_frozen(state, 0, True, T0 + 4)
    assert events[0].kind == EventKind.FROZEN and events[0].node == 0 and events[0].rank is None
    assert all(w.frozen for w in state.workers.values()) and state.nodes[0].frozen
    assert controls.rank_slowed(state, 0, 0.25, T0 + 5)[0].detail["fraction"] == 0.25
    assert state.workers[0].slowed == 0.25
    controls.rank_slowed(state, 0, 1, T0 + 6)
    assert state.workers[0].slowed is None
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        controls.rank_slowed(state, 0, 1.5, T0 + 7)
    with pytest.raises(ValueError, match="rank 5 is not running"):
        controls.rank_frozen(state, 5, True, T0 + 7)


def test_a_node_waiting_in_the_exit_barrier_of_a_world_that_is_gone_is_stopped():
    state = job(1, 1)
    for node in (0, 1):
        started(state, node, node)
    rules.apply(state, 0, protocol.Succeeded(0, {0: b"x"}, round=0), T0 + 2)
    rules.apply(state, 1, protocol.Restarting("failure", 0, 1, T0 + 3), T0 + 3)
    assert rules.abandoned_in_exit_barrier(state, 1) == [0] and state.nodes[0].stopping
    assert rules.abandoned_in_exit_barrier(state, 1) == []  # once
    assert state.nodes[0].status == NodeStatus.SUCCEEDED  # its results stand until a newer world's
