"""The rules of nodes a scheduler starts (Slurm, ssh): submitted, queued, joined, ended, leaving.

A scheduled node is in the state from its submission on (``node_submitting``
while its launcher works, ``node_submitted`` once it took it), ``queued``,
with no channel yet; its launcher's observations (``SchedulerStatus``) come in
through ``scheduler_changed``; it becomes ``starting`` when it joins
(``scheduled_node_joined``) and is then a node like any other. One that
ends before it joined is lost (``never_joined``); one its scheduler warns
of the end (``node_leaving``) leaves: ``left`` once gone, and the others
re-form without spending the restart budget. Pure, as ``model.rules``.
"""

from __future__ import annotations

from dataclasses import dataclass

from elastic_nb.model.rules import add_node, check_finished
from elastic_nb.model.state import Event, EventKind, JobState, NodeStatus


@dataclass(frozen=True)
class SchedulerStatus:
    """What a launcher sees of its node: the scheduler's state (``PENDING``), why
    (``Resources``), where it runs (``c2``), and whether it has ended."""

    state: str
    reason: str = ""
    where: str = ""
    ended: bool = False

    def describe(self, submission: str) -> str:
        """``queued: Slurm job 4711 PENDING (Resources)``, ``running on c2``..."""
        if self.ended:
            return f"ended: {submission} {self.state}" + (f" ({self.reason})" if self.reason else "")
        if self.where:
            return f"{self.state.lower()} on {self.where}: {submission}"
        return f"queued: {submission} {self.state}" + (f" ({self.reason})" if self.reason else "")


def node_submitting(state: JobState, index: int, nproc: int, role: str, where: str,
                    now: float) -> list[Event]:
    """Node ``index`` is being handed to its launcher (sbatch, ssh: seconds on a busy
    cluster, off the job's lock); it holds its index from now on."""
    node = add_node(state, index, nproc, role, local=False, host=where)
    node.status, node.where = NodeStatus.QUEUED, where
    node.scheduler = f"submitting: {where}"
    return [state.record(now, EventKind.NODE_ADDED, node=index,
                         detail={"nproc": nproc, "role": role, "on": where})]


def node_submitted(state: JobState, index: int, submission: str, now: float) -> list[Event]:
    """Its launcher took node ``index`` (``submission``: "Slurm job 4711")."""
    node = state.nodes[index]
    if node.status == NodeStatus.QUEUED:  # a fast node may have joined already
        node.scheduler = f"queued: {submission}"
    return [state.record(now, EventKind.SUBMITTED, node=index, detail={"submission": submission})]


def scheduler_changed(state: JobState, index: int, status: SchedulerStatus, submission: str,
                      now: float) -> list[Event]:
    """The launcher saw a new scheduler state for node ``index``; an event when it changed."""
    node = state.nodes[index]
    text = status.describe(submission)
    if text == node.scheduler:
        return []
    node.scheduler = text
    detail = {"state": status.state, "submission": submission}
    if status.reason:
        detail["reason"] = status.reason
    if status.where:
        detail["on"] = status.where
    return [state.record(now, EventKind.SCHEDULER, node=index, detail=detail)]


def scheduled_node_joined(state: JobState, index: int, host: str, now: float) -> list[Event]:
    """Node ``index`` started and joined from ``host``: a node like any other from now on."""
    node = state.nodes[index]
    node.status, node.host = NodeStatus.STARTING, host
    return [state.record(now, EventKind.SCHEDULER, node=index,
                         detail={"state": "joined", "on": host})]


def never_joined(state: JobState, index: int, why: str, now: float) -> list[Event]:
    """Its scheduler ended node ``index`` before it joined (refused, failed, cancelled):
    lost; the job goes on with the others, or fails if none is left."""
    node = state.nodes[index]
    if node.status != NodeStatus.QUEUED:
        return []
    before = len(state.events)
    node.status, node.gone, node.error = NodeStatus.LOST, True, why
    state.record(now, EventKind.NODE_EXITED, node=index,
                 detail={"status": node.status, "error": why})
    check_finished(state, now)
    return state.events[before:]


def node_leaving(state: JobState, index: int, reason: str, now: float) -> list[Event]:
    """Node ``index``'s scheduler warned of its end (``reason``): it leaves on its own; the
    caller restarts the others (a membership restart, no budget spent)."""
    node = state.nodes[index]
    if not node.status.live or node.leaving:
        return []
    node.leaving = True
    return [state.record(now, EventKind.PREEMPTING, node=index, detail={"reason": reason})]


def join_refused(state: JobState, index: int | None, reason: str, now: float) -> list[Event]:
    """A node would not run what it was given (``reason``); node ``index`` if it is known."""
    return [state.record(now, EventKind.JOIN_REFUSED, node=index, detail={"reason": reason})]
