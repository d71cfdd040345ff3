"""What was observed: the Job's state as plain data, and the rules that change it.

The rules are plain functions: a report from an agent (``apply``), a node's
channel closing (``node_gone``) or a user's command (``rank_killed``,
``node_killed``, ``node_added``, ``stop_requested``) goes in; the state
changes and the new ``Event``s come out. They do no I/O and read no clock
(the caller passes ``now``), so every rule is tested in milliseconds without
a process (tests/test_state.py). The Job calls them under its lock and acts
on the events (following log files, stopping nodes, waking waiters).

States and their transitions, as torch's ``WorkerState`` documents its own:

``JobStatus``::

    PENDING ──nodes started──▶ RENDEZVOUS ──a node started workers──▶ RUNNING
    RUNNING ──a node restarts its group──▶ RESTARTING ──workers started──▶ RUNNING
    any of the above ──▶ SUCCEEDED | FAILED | STOPPED   (final; never left)

``NodeStatus``::

    STARTING ──started workers──▶ RUNNING ──every worker returned──▶ SUCCEEDED
    STARTING | RUNNING ──budget spent, agent error──▶ FAILED
    STARTING | RUNNING ──job.kill_node──▶ KILLED
    STARTING | RUNNING ──its agent vanished without a last report, or its channel closed──▶ LOST
    STARTING | RUNNING ──job.stop, or the job failed elsewhere──▶ STOPPED
    STARTING | RUNNING ──a joined node broke the protocol──▶ DROPPED (the job goes on)

``WorkerStatus`` (one rank of the current attempt)::

    RUNNING ──it stopped in its debugger (breakpoint, post-mortem)──▶ PAUSED ──resumed──▶ RUNNING
    RUNNING | PAUSED ──its group restarts──▶ RESTARTING (until the new attempt replaces it)
    RUNNING | PAUSED ──it failed──▶ FAILED
    RUNNING ──its node returned every result──▶ SUCCEEDED
    RUNNING | PAUSED | RESTARTING ──its node stopped, failed or was lost──▶ STOPPED
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from elastic_nb import protocol
from elastic_nb.errors import RankFailure, first_failure, ordered_failures
from elastic_nb.strenum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    RENDEZVOUS = "rendezvous"
    RUNNING = "running"
    RESTARTING = "restarting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


class NodeStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    STOPPED = "stopped"
    DROPPED = "dropped"
    LOST = "lost"

    @property
    def live(self) -> bool:
        """Its agent is (meant to be) running."""
        return self in (NodeStatus.STARTING, NodeStatus.RUNNING)


class WorkerStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    STOPPED = "stopped"

    @property
    def alive(self) -> bool:
        """Its process is there to signal, dump or debug."""
        return self in (WorkerStatus.RUNNING, WorkerStatus.PAUSED)


class EventKind(StrEnum):
    """Everything the timeline records: agents' reports, users' commands, the job's end."""

    LAUNCHED = "launched"
    RENDEZVOUS = "rendezvous"
    STARTED = "started"
    WORKER_FAILED = "worker_failed"
    RESTARTING = "restarting"
    PAUSED = "paused"  # a rank stopped in its debugger
    RESUMED = "resumed"
    KILLED = "killed"  # the user signalled a rank
    NODE_KILLED = "node_killed"
    NODE_ADDED = "node_added"
    NODE_EXITED = "node_exited"
    AGENT_ERROR = "agent_error"
    MEMBERSHIP_CHANGED = "membership_changed"
    JOIN_UNAVAILABLE = "join_unavailable"
    SUCCEEDED = "succeeded"  # the job's final event, one of these three
    FAILED = "failed"
    STOPPED = "stopped"


FINAL_EVENTS = {JobStatus.SUCCEEDED: EventKind.SUCCEEDED, JobStatus.FAILED: EventKind.FAILED,
                JobStatus.STOPPED: EventKind.STOPPED}


@dataclass(frozen=True)
class Event:
    """One thing that happened to a job, in time order.

    ``node`` is the node index and ``rank`` the global rank the event concerns,
    or None when it concerns the whole job (or node). ``failures`` holds the
    rank failures a ``worker_failed`` or final ``failed`` event reports.
    """

    time: float
    kind: EventKind
    node: int | None = None
    rank: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    failures: tuple[RankFailure, ...] = ()

    def __str__(self) -> str:
        where = []
        if self.node is not None:
            where.append(f"node {self.node}")
        if self.rank is not None:
            where.append(f"rank {self.rank}")
        info = ", ".join(f"{k}={v}" for k, v in self.detail.items() if _short(v))
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        frac = f"{self.time % 1:.3f}"[1:]
        return f"{stamp}{frac} {self.kind:<13} {' '.join(where):<16} {info}".rstrip()


def _short(value: Any) -> bool:
    return not isinstance(value, (dict, list)) and len(str(value)) <= 80


@dataclass
class WorkerInfo:
    """One worker of the current attempt."""

    rank: int
    local_rank: int
    role: str
    group_rank: int
    node: int
    pid: int
    state: WorkerStatus
    restart_count: int
    attempt: int
    world_size: int
    started_at: float = 0.0
    rank_dir: str = ""  # where its log, error and stack files are (on its node's machine)
    pause: protocol.Paused | None = None  # where it last stopped in its debugger
    killed_at: float | None = None  # when the user signalled it (job.kill)

    @property
    def current_pause(self) -> protocol.Paused | None:
        """Where it waits in its debugger now (None unless PAUSED)."""
        return self.pause if self.state == WorkerStatus.PAUSED else None


@dataclass
class NodeState:
    """One node's agent as the Job sees it."""

    index: int
    nproc: int
    role: str
    local: bool  # started by this Job on this machine (else joined from ``host``)
    host: str = "localhost"
    status: NodeStatus = NodeStatus.STARTING
    error: str | None = None
    gone: bool = False  # its channel has closed
    stopping: bool = False  # the Job asked it to stop
    in_rendezvous: bool = False  # it reported a round or workers: others may wait for its ranks
    host_pid: int | None = None  # a local node's host process
    warm: bool = False  # a local node whose host had served an earlier job


@dataclass
class JobState:
    """Everything observed about one job; changed only by this module's rules."""

    started_at: float
    status: JobStatus = JobStatus.PENDING
    nodes: dict[int, NodeState] = field(default_factory=dict)
    workers: dict[int, WorkerInfo] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    results: dict[int, bytes] = field(default_factory=dict)  # cloudpickled, by rank
    failures: dict[int, RankFailure] = field(default_factory=dict)  # those that ended the job
    failure_history: list[RankFailure] = field(default_factory=list)
    error: str | None = None
    stop_requested: bool = False
    finished_at: float | None = None
    members: list[int] | None = None  # the nodes of the last world formed, by group rank
    forming: dict[int, int] = field(default_factory=dict)  # group rank -> node, this round

    @property
    def done(self) -> bool:
        return self.status.final

    @property
    def restart_count(self) -> int:
        return max((w.restart_count for w in self.workers.values()), default=0)

    def live_nodes(self) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n.status.live)

    def live_world_size(self) -> int:
        """Ranks the live nodes run (what the next rendezvous can form)."""
        return sum(n.nproc for n in self.nodes.values() if n.status.live)

    def first_failure(self) -> RankFailure | None:
        return first_failure(self.failures.values())

    def record(self, now: float, kind: EventKind, node: int | None = None, rank: int | None = None,
               detail: dict[str, Any] | None = None,
               failures: tuple[RankFailure, ...] = ()) -> Event:
        event = Event(now, kind, node, rank, detail or {}, failures)
        self.events.append(event)
        return event


# ------------------------------------------------------------ the rules

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
    node.status = NodeStatus.RUNNING
    node.in_rendezvous = True
    # a new attempt replaces this node's workers; those of nodes gone are in no world now
    for rank in [r for r, w in state.workers.items()
                 if w.node == node.index or not state.nodes[w.node].status.live]:
        del state.workers[rank]
    for w in msg.workers:
        state.workers[w.rank] = WorkerInfo(
            rank=w.rank, local_rank=w.local_rank, role=msg.role, group_rank=msg.group_rank,
            node=node.index, pid=w.pid, state=WorkerStatus.RUNNING,
            restart_count=msg.restart_count, attempt=msg.attempt, world_size=w.world_size,
            started_at=now, rank_dir=os.path.dirname(w.stdout))
    state.record(_observed(node, msg.observed_at, now), EventKind.STARTED, node=node.index, detail={
        "attempt": msg.attempt, "restart_count": msg.restart_count,
        "ranks": [w.rank for w in msg.workers], "pids": [w.pid for w in msg.workers]})
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
    for failure in ordered_failures(failures):
        state.failure_history.append(failure)
        worker = state.workers.get(failure.rank)
        if worker is not None:
            worker.state = WorkerStatus.FAILED
        state.record(_observed(node, msg.observed_at, now), EventKind.WORKER_FAILED,
                     node=node.index, rank=failure.rank, detail={
            "message": failure.message, "exitcode": failure.exitcode, "signal": failure.signal,
            "restart_count": failure.restart_count,
            "remaining_restarts": msg.remaining_restarts}, failures=(failure,))


def _on_restarting(state: JobState, node: NodeState, msg: protocol.Restarting, now: float) -> None:
    for worker in _workers_of(state, node.index, WorkerStatus.RUNNING, WorkerStatus.PAUSED):
        worker.state = WorkerStatus.RESTARTING
    state.record(_observed(node, msg.observed_at, now), EventKind.RESTARTING, node=node.index, detail={
        "reason": msg.reason, "remaining_restarts": msg.remaining_restarts,
        "max_restarts": msg.max_restarts})
    _set_status(state, JobStatus.RESTARTING)


def _on_succeeded(state: JobState, node: NodeState, msg: protocol.Succeeded, now: float) -> None:
    node.status = NodeStatus.SUCCEEDED
    state.results.update(msg.return_values)
    for worker in _workers_of(state, node.index):
        worker.state = WorkerStatus.SUCCEEDED


def _on_failed(state: JobState, node: NodeState, msg: protocol.Failed, now: float) -> None:
    node.status = NodeStatus.FAILED
    for report in msg.failures:
        failure = rank_failure(node, report)
        state.failures[failure.rank] = failure
    for worker in _workers_of(state, node.index):
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


def _on_log(state: JobState, node: NodeState, msg: protocol.Log, now: float) -> None:
    """A joined node's lines go to the log book, not the state (the Job does that)."""


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


def pause_location(pause: protocol.Paused) -> str:
    """``cell 7, line 4`` for a notebook cell, else ``file.py:12`` (in ``function``)."""
    if pause.cell is not None:
        return f"cell {pause.cell}, line {pause.line}"
    return f"{os.path.basename(pause.file)}:{pause.line} in {pause.function}"


_RULES: dict[protocol.ReportKind, Any] = {
    protocol.ReportKind.RENDEZVOUS: _on_rendezvous,
    protocol.ReportKind.STARTED: _on_started,
    protocol.ReportKind.WORKER_FAILED: _on_worker_failed,
    protocol.ReportKind.RESTARTING: _on_restarting,
    protocol.ReportKind.SUCCEEDED: _on_succeeded,
    protocol.ReportKind.FAILED: _on_failed,
    protocol.ReportKind.AGENT_ERROR: _on_agent_error,
    protocol.ReportKind.LOG: _on_log,
    protocol.ReportKind.PAUSED: _on_paused,
    protocol.ReportKind.RESUMED: _on_resumed,
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
        if node.stopping or state.stop_requested:
            node.status = NodeStatus.STOPPED
        else:
            node.status = NodeStatus.LOST
            node.error = (f"the agent of node {index} exited unexpectedly "
                          f"(exit code {returncode}); {where}")
    for worker in _workers_of(state, index, WorkerStatus.RUNNING, WorkerStatus.PAUSED,
                              WorkerStatus.RESTARTING):
        worker.state = WorkerStatus.STOPPED
    state.record(now, EventKind.NODE_EXITED, node=index,
                 detail={"status": node.status, "exitcode": returncode})
    check_finished(state, now)
    return state.events[before:]


def rank_killed(state: JobState, rank: int, signal_name: str, now: float) -> list[Event]:
    """The user signals a rank; ValueError if it is not running."""
    worker = state.workers.get(rank)
    if worker is None or not worker.state.alive:
        running = sorted(r for r, w in state.workers.items() if w.state.alive)
        status = worker.state if worker else "unknown"
        raise ValueError(f"rank {rank} is not running (state: {status}); running ranks: {running}")
    worker.killed_at = now
    return [state.record(now, EventKind.KILLED, node=worker.node, rank=rank,
                         detail={"signal": signal_name, "pid": worker.pid})]


def node_killed(state: JobState, index: int, now: float) -> list[Event]:
    """The user kills a whole node; ValueError if it is not live."""
    node = state.nodes.get(index)
    if node is None or not node.status.live:
        status = node.status if node else "unknown"
        raise ValueError(f"node {index} is not running (status: {status}); "
                         f"live nodes: {state.live_nodes()}")
    node.status = NodeStatus.KILLED
    return [state.record(now, EventKind.NODE_KILLED, node=index, detail={"host": node.host})]


def check_can_add_node(state: JobState, max_nodes: int) -> str | None:
    """Why another node cannot join now, or None."""
    if state.done:
        return f"the job has already {state.status}"
    live = state.live_nodes()
    if len(live) >= max_nodes:
        return (f"the job already has max_nodes={max_nodes} live nodes {live}; "
                "launch with a larger max_nodes to scale up")
    return None


def node_added(state: JobState, index: int, nproc: int, role: str, local: bool, host: str,
               now: float) -> list[Event]:
    add_node(state, index, nproc, role, local, host)
    detail: dict[str, Any] = {"nproc": nproc, "role": role}
    if not local:
        detail["host"] = host
    return [state.record(now, EventKind.NODE_ADDED, node=index, detail=detail)]


def stop_requested(state: JobState, now: float) -> list[Event]:
    """The user stops the job: every live node is asked to stop."""
    state.stop_requested = True
    before = len(state.events)
    for node in state.nodes.values():
        if node.status.live:
            node.stopping = True
    check_finished(state, now)
    return state.events[before:]


def check_finished(state: JobState, now: float) -> list[Event]:
    """End the job once its nodes say how it ended; the final event, if it ended now."""
    if state.done:
        return []
    statuses = [n.status for n in state.nodes.values()]
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
    """
    if state.done or state.stop_requested or not state.nodes[lost].in_rendezvous:
        return []
    return [i for i in state.live_nodes() if i != lost]


_LOST_STATUSES = (NodeStatus.KILLED, NodeStatus.DROPPED, NodeStatus.LOST)
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


def _workers_of(state: JobState, node: int, *statuses: WorkerStatus) -> list[WorkerInfo]:
    return [w for w in state.workers.values()
            if w.node == node and (not statuses or w.state in statuses)]
