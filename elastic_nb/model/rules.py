"""The rules that change a job's state: plain functions, report or command in, events out.

A report from a node host (``apply``), a node's channel closing
(``node_gone``) or a user's command (``rank_killed``, ``node_killed``,
``node_added``, ``stop_requested``) goes in; the state (``model.state``)
changes and the new ``Event``s come out. They do no I/O and read no clock
(the caller passes ``now``), so every rule is tested in milliseconds without
a process (tests/test_state.py). The kernel's pump calls them under the
Job's lock and acts on the events (following log files, stopping nodes,
waking waiters).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from elastic_nb.model import losses
from elastic_nb.model.errors import RankFailure, ordered_failures
from elastic_nb.model.state import (
    FINAL_EVENTS,
    Event,
    EventKind,
    JobState,
    JobStatus,
    NodeState,
    NodeStatus,
    WorkerInfo,
    WorkerStatus,
    pause_location,
)
from elastic_nb.wire import reports as protocol


def add_node(state: JobState, index: int, nproc: int, role: str, local: bool,
             host: str = "localhost") -> NodeState:
    node = NodeState(index, nproc, role, local, host)
    state.nodes[index] = node
    return node


def host_assigned(state: JobState, index: int, pid: int, warm: bool) -> None:
    """A local node runs in host process ``pid``, started for it or ``warm`` from the pool."""
    node = state.nodes[index]
    node.host_pid, node.warm = pid, warm


def _observed(node: NodeState, observed_at: float, now: float) -> float:
    """When a local agent saw what it reports (its clock is ours); a remote one's, on arrival."""
    return min(observed_at, now) if node.local else now


def launched(state: JobState, now: float, detail: dict[str, Any]) -> list[Event]:
    events = [state.record(now, EventKind.LAUNCHED, detail=detail)]
    _set_status(state, JobStatus.RENDEZVOUS)
    return events


def apply(state: JobState, index: int, report: protocol.Report, now: float) -> list[Event]:
    """One report from node ``index``'s agent: the state changes, the new events."""
    node = state.nodes[index]
    before = len(state.events)
    _RULES[report.kind](state, node, report, now)
    check_finished(state, now)
    return state.events[before:]


def _on_rendezvous(state: JobState, node: NodeState, msg: protocol.Rendezvous, now: float) -> None:
    state.record(now, EventKind.RENDEZVOUS, node=node.index, detail={
        "group_rank": msg.group_rank, "group_world_size": msg.group_world_size,
        "world_size": msg.world_size})
    node.in_rendezvous = True
    _note_round_member(state, node.index, msg.group_rank, msg.group_world_size, msg.world_size, now)
    if state.status == JobStatus.PENDING:
        _set_status(state, JobStatus.RENDEZVOUS)


def _note_round_member(state: JobState, node: int, group_rank: int, group_world_size: int,
                       world_size: int, now: float) -> None:
    """Once every node of a round has reported, compare its nodes with the last world's."""
    if group_rank in state.forming or any(rank >= group_world_size for rank in state.forming):
        state.forming = {}  # a new round began before the last one was fully reported
    state.forming[group_rank] = node
    if len(state.forming) < group_world_size:
        return
    members = [state.forming[rank] for rank in sorted(state.forming)]
    state.forming = {}
    previous = state.members
    if previous is not None and sorted(members) != sorted(previous):
        state.record(now, EventKind.MEMBERSHIP_CHANGED, detail={
            "nodes": len(members), "world_size": world_size, "previous_nodes": len(previous),
            "members": members, "joined": sorted(set(members) - set(previous)),
            "left": sorted(set(previous) - set(members))})
    state.members = members


def _on_started(state: JobState, node: NodeState, msg: protocol.Started, now: float) -> None:
    """``workers`` lists the workers of the last world formed, all of its nodes', those that
    finished included, and never a worker of another world.

    Every node of a world reports the round it formed in: the first report of a newer round
    replaces the whole list (the last world's workers are in no world now), a report of that
    round adds its node's workers, and a late report of an older round adds none (its ranks
    are another world's). Without a round number (a backend that does not tell) a report
    replaces its own node's workers and drops those of nodes lost, killed or dropped.
    """
    node.status = NodeStatus.RUNNING
    node.in_rendezvous = True
    if msg.round is None:
        gone = [r for r, w in state.workers.items()
                if w.node == node.index or state.nodes[w.node].status in _LOST_STATUSES]
    elif state.world is None or msg.round > state.world:
        state.world, gone = msg.round, list(state.workers)
    else:
        gone = [r for r, w in state.workers.items() if w.node == node.index]
    in_world = msg.round is None or msg.round == state.world
    if in_world:
        for rank in gone:
            del state.workers[rank]
        for w in msg.workers:
            state.workers[w.rank] = WorkerInfo(
                rank=w.rank, local_rank=w.local_rank, role=msg.role, group_rank=msg.group_rank,
                node=node.index, pid=w.pid, state=WorkerStatus.RUNNING,
                restart_count=msg.restart_count, attempt=msg.attempt, world_size=w.world_size,
                started_at=now, rank_dir=os.path.dirname(w.stdout), round=msg.round)
    detail: dict[str, Any] = {
        "attempt": msg.attempt, "restart_count": msg.restart_count,
        "ranks": [w.rank for w in msg.workers], "pids": [w.pid for w in msg.workers]}
    if msg.round is not None:
        detail["round"] = msg.round
    if not in_world:
        detail["stale"] = True  # started in an older world than the one listed
    state.record(_observed(node, msg.observed_at, now), EventKind.STARTED, node=node.index,
                 detail=detail)
    _set_status(state, JobStatus.RUNNING)


def rank_failure(node: NodeState, report: protocol.FailureReport) -> RankFailure:
    return RankFailure(
        rank=report.rank, local_rank=report.local_rank, role=node.role, node=node.index,
        exitcode=report.exitcode, signal=report.signal, message=report.message,
        traceback=report.traceback, restart_count=report.restart_count,
        time=float(report.timestamp), pid=report.pid)


def _on_worker_failed(state: JobState, node: NodeState, msg: protocol.WorkerFailed,
                      now: float) -> None:
    """The ranks that failed together, first cause first (``ordered_failures``)."""
    failures = []
    for report in msg.failures:
        failure = rank_failure(node, report)
        worker = state.workers.get(failure.rank)
        if (worker is not None and worker.killed_at is not None and failure.signal
                and failure.pid == worker.pid):
            # it died as the user's signal landed (in torch's whole seconds), before the
            # peers it took down with it
            failure = replace(failure, time=min(failure.time, float(int(worker.killed_at))),
                              by_user=True)
        failures.append(failure)
    if msg.held:
        state.holding[node.index] = state.world
    elif losses.failed_on_its_own(msg.held, [f.signal for f in failures],
                                  [f.by_user for f in failures]):
        state.own_failure_worlds.add(state.world)
    for failure in ordered_failures(failures):
        state.failure_history.append(failure)
        worker = state.workers.get(failure.rank)
        if worker is not None:
            worker.state = WorkerStatus.FAILED
        detail = {"message": failure.message, "exitcode": failure.exitcode,
                  "signal": failure.signal, "restart_count": failure.restart_count,
                  "remaining_restarts": msg.remaining_restarts}
        if msg.held:
            detail["held"] = "a broken connection to a peer: waiting to see if a node was lost"
        state.record(_observed(node, msg.observed_at, now), EventKind.WORKER_FAILED,
                     node=node.index, rank=failure.rank, detail=detail, failures=(failure,))


def release_held(state: JobState, index: int, report: protocol.WorkerFailed) -> list[int]:
    """After node ``index``'s failure report: the nodes whose held failure now follows torch's
    restart policy (a node of their world failed on its own; ``model.losses``), no longer
    holding."""
    world = state.world
    if world not in state.own_failure_worlds:
        return []
    released = [index] if report.held else losses.releases(state.holding, world, index)
    for node in released:
        state.holding.pop(node, None)
    return released


def _last_loss(state: JobState) -> str | None:
    """The newest lost node's loss, as the timeline first said it (for a failure that followed
    it): a node found silent and then fenced is "lost", not the "exited" its fencing caused."""
    losses = [e for e in state.events if e.kind in (
        EventKind.NODE_LOST, EventKind.NODE_KILLED, EventKind.PREEMPTING) or (
            e.kind == EventKind.NODE_EXITED and e.detail.get("status") in _LOST_STATUSES)]
    if not losses:
        return None
    first = next(e for e in losses if e.node == losses[-1].node)
    return f"node {first.node} {first.kind.replace('node_', '').replace('_', ' ')}"


def stalled(state: JobState, answer: str | None, suspects: list[int], attempt: int,
            now: float) -> list[Event]:
    """No progress for ``hang_after``: a ``stalled`` event with the hang map's answer (None:
    progress resumed, the stall is over; no event)."""
    if state.done:
        return []
    state.stall = answer
    if answer is None:
        return []
    return [state.record(now, EventKind.STALLED, detail={
        "answer": answer, "suspects": suspects, "attempt": attempt})]


def _on_restarting(state: JobState, node: NodeState, msg: protocol.Restarting, now: float) -> None:
    state.stall = None  # a new attempt: a stall of the old one is over
    for worker in workers_of(state, node.index, WorkerStatus.RUNNING, WorkerStatus.PAUSED):
        worker.state = WorkerStatus.RESTARTING
    detail: dict[str, Any] = {"reason": msg.reason, "remaining_restarts": msg.remaining_restarts,
                              "max_restarts": msg.max_restarts}
    if node.index in state.holding:
        del state.holding[node.index]
        loss = _last_loss(state) if msg.reason == "membership" else None
        if loss is not None:
            detail["followed_from"] = f"{loss}: the failure of node {node.index}'s ranks followed from it"
    state.record(_observed(node, msg.observed_at, now), EventKind.RESTARTING, node=node.index,
                 detail=detail)
    _set_status(state, JobStatus.RESTARTING)


def _on_succeeded(state: JobState, node: NodeState, msg: protocol.Succeeded, now: float) -> None:
    """A node's results count only if they are of the newest world that returned any: a
    node that re-formed alone after its peers finished replaces their results, and a late
    report of an older world adds none. Results never mix worlds. A node returns only the
    ranks it holds in that world: values for any other rank are refused (a peer that
    claims another node's ranks replaces nothing)."""
    node.status = NodeStatus.SUCCEEDED
    held = {r for r, w in state.workers.items()
            if w.node == node.index and (msg.round is None or w.round == msg.round)}
    foreign = sorted(set(msg.return_values) - held)
    if foreign:
        state.record(now, EventKind.REPORT_REFUSED, node=node.index, detail={
            "ranks": foreign, "reason": f"results for ranks node {node.index} does not hold "
                                        f"in round {msg.round}"})
    values = {r: v for r, v in msg.return_values.items() if r in held}
    if not values and foreign:
        return
    if msg.round is not None and state.results_round is not None and msg.round != state.results_round:
        if msg.round < state.results_round:
            return  # an older world's: the newer world's results stand
        state.results.clear()
    state.results_round = msg.round if msg.round is not None else state.results_round
    state.results.update(values)
    for worker in workers_of(state, node.index):
        worker.state = WorkerStatus.SUCCEEDED


def _on_failed(state: JobState, node: NodeState, msg: protocol.Failed, now: float) -> None:
    node.status = NodeStatus.FAILED
    for report in msg.failures:
        failure = rank_failure(node, report)
        state.failures[failure.rank] = failure
    for worker in workers_of(state, node.index):
        if worker.state != WorkerStatus.FAILED:
            worker.state = WorkerStatus.STOPPED


def _on_agent_error(state: JobState, node: NodeState, msg: protocol.AgentError, now: float) -> None:
    agent_error(state, node.index, msg.message, now)


def agent_error(state: JobState, index: int, message: str, now: float,
                drop: bool = False) -> list[Event]:
    """Node ``index`` cannot go on (its agent said so, or it broke the protocol).

    A local agent's error fails the job. With ``drop`` (a joined node that
    misbehaved) the node is dropped and the job goes on without it.
    """
    node = state.nodes[index]
    before = len(state.events)
    if node.status.live:
        node.status = NodeStatus.DROPPED if drop else NodeStatus.FAILED
    node.error = node.error or message
    if not drop:
        state.error = state.error or message + _lost_before(state)
    state.record(now, EventKind.AGENT_ERROR, node=index,
                 detail={"message": message, "dropped": drop})
    check_finished(state, now)
    return state.events[before:]


def _lost_before(state: JobState) -> str:
    """The nodes the job lost, which a survivor's error (a rendezvous that timed out waiting
    for ``min_nodes``) is often about: '' if none."""
    lost = [f"node {n.index} {n.status}" + (f" ({n.error})" if n.error else "")
            for n in state.nodes.values() if n.status in _LOST_STATUSES]
    return f" (after losing {'; '.join(lost)})" if lost else ""


def _on_paused(state: JobState, node: NodeState, msg: protocol.Paused, now: float) -> None:
    worker = state.workers.get(msg.rank)
    if worker is None or not worker.state.alive:
        return  # a notice from a rank already replaced
    worker.state, worker.pause = WorkerStatus.PAUSED, msg
    detail: dict[str, Any] = {"reason": msg.reason, "where": pause_location(msg),
                              "source": msg.source}
    if msg.exception:
        detail["exception"] = msg.exception
    state.record(_observed(node, msg.observed_at, now), EventKind.PAUSED, node=node.index,
                 rank=msg.rank, detail=detail)


def _on_resumed(state: JobState, node: NodeState, msg: protocol.Resumed, now: float) -> None:
    worker = state.workers.get(msg.rank)
    if worker is None or worker.state != WorkerStatus.PAUSED:
        return
    worker.state = WorkerStatus.RUNNING
    state.record(_observed(node, msg.observed_at, now), EventKind.RESUMED, node=node.index,
                 rank=msg.rank)


_RULES: dict[protocol.ReportKind, Any] = {
    protocol.ReportKind.RENDEZVOUS: _on_rendezvous,
    protocol.ReportKind.STARTED: _on_started,
    protocol.ReportKind.WORKER_FAILED: _on_worker_failed,
    protocol.ReportKind.RESTARTING: _on_restarting,
    protocol.ReportKind.SUCCEEDED: _on_succeeded,
    protocol.ReportKind.FAILED: _on_failed,
    protocol.ReportKind.AGENT_ERROR: _on_agent_error,
    protocol.ReportKind.PAUSED: _on_paused,
    protocol.ReportKind.RESUMED: _on_resumed,
    protocol.ReportKind.STATE_FORGED: lambda state, node, msg, now: state.record(
        now, EventKind.STATE_FORGED, node=node.index,
        detail={"reason": f"rendezvous state not signed with this job's key, from {msg.where}"}),
}


def node_gone(state: JobState, index: int, returncode: int | None, now: float,
              where: str) -> list[Event]:
    """Node ``index``'s channel closed: its agent exited, was killed, or crashed.

    An agent that goes without a last report (success, failure, error) is
    lost: the survivors re-form without it (``survivors``) or, with no node
    left, the job fails naming it. ``where`` tells the user where to look
    (its agent log, or its host).
    """
    node = state.nodes[index]
    before = len(state.events)
    node.gone = True
    if node.status.live:
        if node.leaving:
            node.status = NodeStatus.LEFT
        elif node.stopping or state.stop_requested:
            node.status = NodeStatus.STOPPED
        else:
            node.status = NodeStatus.LOST
            node.error = (f"the agent of node {index} exited unexpectedly "
                          f"(exit code {returncode}); {where}")
    _workers_stopped(state, index)
    state.record(now, EventKind.NODE_EXITED, node=index,
                 detail={"status": node.status, "exitcode": returncode})
    check_finished(state, now)
    return state.events[before:]


def _workers_stopped(state: JobState, index: int) -> None:
    """The node is gone or fenced: its workers that were still there are not any more."""
    for worker in workers_of(state, index, WorkerStatus.RUNNING, WorkerStatus.PAUSED,
                             WorkerStatus.RESTARTING):
        worker.state = WorkerStatus.STOPPED


def node_silent(state: JobState, index: int, silent_for: float, now: float) -> list[Event]:
    """Node ``index`` sent nothing for ``silent_for`` seconds, beyond its liveness timeout:
    lost (frozen, partitioned, its machine hung). The caller fences it and restarts the
    survivors (``survivors``), as for a node whose agent died."""
    node = state.nodes[index]
    before = len(state.events)
    if not node.status.live:
        return []
    node.status = NodeStatus.LOST
    node.error = (f"node {index} on {node.host} went silent: nothing from it for "
                  f"{silent_for:.1f} s (frozen, partitioned or its machine hung)")
    _workers_stopped(state, index)
    state.record(now, EventKind.NODE_LOST, node=index, detail={
        "silent_for": round(silent_for, 1), "host": node.host})
    check_finished(state, now)
    return state.events[before:]


def check_finished(state: JobState, now: float) -> list[Event]:
    """End the job once its nodes say how it ended; the final event, if it ended now."""
    if state.done:
        return []
    statuses = [n.status for n in state.nodes.values() if n.status != NodeStatus.QUEUED]
    queued = len(statuses) < len(state.nodes)
    if state.stop_requested:
        if not any(s.live for s in statuses):
            return finish(state, JobStatus.STOPPED, now)
    elif NodeStatus.FAILED in statuses:
        for node in state.nodes.values():
            if node.status.live:
                node.stopping = True  # the Job stops them: a failed job ends promptly
        return finish(state, JobStatus.FAILED, now)
    elif statuses and all(s in _ENDED_WITHOUT_FAILING for s in statuses):
        if NodeStatus.SUCCEEDED in statuses:
            return finish(state, JobStatus.SUCCEEDED, now)
        if queued:
            return []  # the nodes still queued may yet form a world
        if all(s == NodeStatus.KILLED for s in statuses):
            state.error = state.error or "every node was killed"
        else:
            state.error = state.error or "no node is left: " + "; ".join(
                f"node {n.index} {n.status}" + (f" ({n.error})" if n.error else "")
                for n in state.nodes.values())
        return finish(state, JobStatus.FAILED, now)
    return []


def survivors(state: JobState, lost: int) -> list[int]:
    """The live nodes to restart at once because node ``lost`` is gone (a membership restart).

    Their workers may wait for the lost node's ranks anywhere (starting, in
    ``init_process_group``, in a collective): restarting re-forms the world
    from the nodes that are left instead of waiting out a collective timeout.
    A node that never reported a rendezvous round (a joined peer dropped at
    once) is in no world, and nobody restarts for it; one lost inside its first
    round before it reported is seen by its lapsed heartbeat (``heartbeat``).
    Nobody restarts for a node the last world formed without, and a node that
    is restarting already (its own heartbeat rule saw the loss) is left to re-form.
    """
    if state.done or state.stop_requested or not state.nodes[lost].in_rendezvous:
        return []
    if state.members is not None and lost not in state.members:
        return []  # the last world formed without it already
    return [i for i in state.live_nodes() if i != lost and not _reforming(state, i)]


def abandoned_in_exit_barrier(state: JobState, restarting: int) -> list[int]:
    """Nodes that returned their results and wait in torch's exit barrier for a world that
    node ``restarting`` just left (its group restarts): nobody else will arrive there. They
    are marked to stop (the caller stops them), so that the restarting node re-forms without
    them rather than waiting for their barrier to time out (which, on some backends, closes
    the rendezvous on it)."""
    if state.done or state.stop_requested:
        return []
    waiting = [i for i, n in state.nodes.items()
               if i != restarting and n.status == NodeStatus.SUCCEEDED and not n.gone
               and not n.stopping]
    for index in waiting:
        state.nodes[index].stopping = True
    return waiting


def _reforming(state: JobState, index: int) -> bool:
    """The node is restarting its group already (it will rendezvous without the lost node)."""
    workers = workers_of(state, index)
    return bool(workers) and all(w.state == WorkerStatus.RESTARTING for w in workers)


_LOST_STATUSES = (NodeStatus.KILLED, NodeStatus.DROPPED, NodeStatus.LOST, NodeStatus.LEFT)
_ENDED_WITHOUT_FAILING = (NodeStatus.SUCCEEDED, *_LOST_STATUSES)


def finish(state: JobState, status: JobStatus, now: float) -> list[Event]:
    if state.done:
        return []
    state.status = status
    state.finished_at = now
    detail: dict[str, Any] = {"elapsed": round(now - state.started_at, 3)}
    failures: tuple[RankFailure, ...] = ()
    if status == JobStatus.FAILED:
        first = state.first_failure()
        if first is not None:
            detail["error"] = first.summary()
            failures = ordered_failures(state.failures.values())
        elif state.error:
            detail["error"] = state.error
    return [state.record(now, FINAL_EVENTS[status], detail=detail, failures=failures)]


def _set_status(state: JobState, status: JobStatus) -> None:
    if not state.done:
        state.status = status


def workers_of(state: JobState, node: int, *statuses: WorkerStatus) -> list[WorkerInfo]:
    return [w for w in state.workers.values()
            if w.node == node and (not statuses or w.state in statuses)]
