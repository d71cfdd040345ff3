"""The rules of the user's commands: check them against the state, record them as events.

Each takes the state and the command's arguments, raises ``ValueError``
naming what is running when the command cannot apply, and returns the new
events; the Job carries the command out (``kernel.job``). Pure, like
``model.rules``: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

from elastic_nb.model.rules import add_node, check_finished, workers_of
from elastic_nb.model.state import Event, EventKind, JobState, NodeStatus, WorkerInfo


def running_worker(state: JobState, rank: int) -> WorkerInfo:
    """The worker of ``rank`` if its process runs; ValueError naming the running ranks if not."""
    worker = state.workers.get(rank)
    if worker is None or not worker.state.alive:
        running = sorted(r for r, w in state.workers.items() if w.state.alive)
        status = worker.state if worker else "unknown"
        raise ValueError(f"rank {rank} is not running (state: {status}); running ranks: {running}")
    return worker


def rank_killed(state: JobState, rank: int, signal_name: str, now: float) -> list[Event]:
    """The user signals a rank; ValueError if it is not running."""
    worker = running_worker(state, rank)
    worker.killed_at = now
    return [state.record(now, EventKind.KILLED, node=worker.node, rank=rank,
                         detail={"signal": signal_name, "pid": worker.pid})]


def node_killed(state: JobState, index: int, now: float) -> list[Event]:
    """The user kills a whole node (a queued one is cancelled); ValueError if it is not live."""
    node = state.nodes.get(index)
    if node is None or (not node.status.live and node.status != NodeStatus.QUEUED):
        status = node.status if node else "unknown"
        raise ValueError(f"node {index} is not running (status: {status}); "
                         f"live nodes: {state.live_nodes()}")
    queued = node.status == NodeStatus.QUEUED
    node.status = NodeStatus.KILLED
    before = len(state.events)
    state.record(now, EventKind.NODE_KILLED, node=index, detail={"host": node.host})
    if queued:  # no channel will end for it
        node.gone = True
        check_finished(state, now)
    return state.events[before:]


def rank_frozen(state: JobState, rank: int, frozen: bool, now: float) -> list[Event]:
    """The user freezes (SIGSTOP) or thaws a rank; ValueError if it is not running."""
    worker = running_worker(state, rank)
    if worker.frozen == frozen:
        return []
    worker.frozen = frozen
    return [state.record(now, EventKind.FROZEN if frozen else EventKind.THAWED,
                         node=worker.node, rank=rank, detail={"pid": worker.pid})]


def node_frozen(state: JobState, index: int, frozen: bool, now: float) -> list[Event]:
    """The user freezes or thaws a whole node (host and workers); ValueError if it is not live."""
    node = state.nodes.get(index)
    if node is None or not node.status.live:
        status = node.status if node else "unknown"
        raise ValueError(f"node {index} is not running (status: {status}); "
                         f"live nodes: {state.live_nodes()}")
    if node.frozen == frozen:
        return []
    node.frozen = frozen
    for worker in workers_of(state, index):
        worker.frozen = frozen
    return [state.record(now, EventKind.FROZEN if frozen else EventKind.THAWED, node=index,
                         detail={"host": node.host})]


def rank_slowed(state: JobState, rank: int, fraction: float, now: float) -> list[Event]:
    """The user makes a rank run at ``fraction`` of its speed (1.0 ends it); ValueError if
    it is not running or the fraction is not in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"the fraction of a rank's speed must be in (0, 1], not {fraction!r} "
                         "(0.25: a quarter of its speed; 1: full speed again)")
    worker = running_worker(state, rank)
    worker.slowed = None if fraction == 1 else float(fraction)
    return [state.record(now, EventKind.SLOWED, node=worker.node, rank=rank,
                         detail={"fraction": float(fraction), "pid": worker.pid})]


def check_can_add_node(state: JobState, max_nodes: int) -> str | None:
    """Why another node cannot join now, or None."""
    if state.done:
        return f"the job has already {state.status}"
    coming = state.coming_nodes()
    if len(coming) >= max_nodes:
        queued = " (counting those still queued)" if coming != state.live_nodes() else ""
        return (f"the job already has max_nodes={max_nodes} live nodes {coming}{queued}; "
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
        elif node.status == NodeStatus.QUEUED:  # the Job cancels its submission
            node.status = NodeStatus.STOPPED
    check_finished(state, now)
    return state.events[before:]


