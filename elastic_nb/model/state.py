"""What was observed: the Job's state as plain data, its states and their transitions.

The state changes only through the rules (``model.rules``): a report, a
node gone or a user's command goes in, the state changes and the new
``Event``s come out.

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
    STARTING | RUNNING ──silent for liveness_timeout (frozen, partitioned), fenced──▶ LOST
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
from dataclasses import dataclass, field
from typing import Any

from elastic_nb.model.checkpoints import SENTENCES, Checkpoint
from elastic_nb.model.errors import RankFailure, first_failure
from elastic_nb.model.strenum import StrEnum
from elastic_nb.wire.reports import Paused


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
    """A node's course: ``queued`` (a scheduled node not yet joined) -> ``starting`` ->
    ``running`` -> one of the ends. ``left``: it left gracefully on its scheduler's warning
    (a time limit or a preemption); ``lost``: gone unseen, or never joined."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    STOPPED = "stopped"
    DROPPED = "dropped"
    LOST = "lost"
    LEFT = "left"

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
    NODE_LOST = "node_lost"  # silent for liveness_timeout (frozen, partitioned): fenced
    FROZEN = "frozen"  # the user froze a rank or a node (SIGSTOP)
    THAWED = "thawed"
    SLOWED = "slowed"  # the user made a rank a straggler (or ended it: fraction 1.0)
    STALLED = "stalled"  # no progress for hang_after: the hang map's answer says where
    AGENT_ERROR = "agent_error"
    MEMBERSHIP_CHANGED = "membership_changed"
    JOIN_UNAVAILABLE = "join_unavailable"
    SUBMITTED = "submitted"  # a node handed to Slurm or ssh
    SCHEDULER = "scheduler"  # its scheduler's state changed (queued, starting on c2, ended)
    PREEMPTING = "preempting"  # its scheduler warned of the end: it leaves, no budget spent
    JOIN_REFUSED = "join_refused"  # a node that would not run what it was given, and why
    STATE_FORGED = "state_forged"  # someone else wrote the rendezvous state: refused, unread
    REPORT_REFUSED = "report_refused"  # results for ranks the reporting node does not hold
    CHECKPOINT = "checkpoint"  # a complete checkpoint: step, world, bytes, seconds
    RESTORED = "restored"  # an attempt resumed from a checkpoint: step, world_from, world_to, seconds
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
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        frac = f"{self.time % 1:.3f}"[1:]
        sentence = SENTENCES.get(self.kind)
        if sentence is not None:  # an event that says itself whole ("checkpoint step 300 (...)")
            return f"{stamp}{frac} {sentence(self.detail)}"
        info = ", ".join(f"{k}={v}" for k, v in self.detail.items() if _short(v))
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
    pause: Paused | None = None  # where it last stopped in its debugger
    killed_at: float | None = None  # when the user signalled it (job.kill)
    frozen: bool = False  # stopped by job.freeze (or its node's freeze)
    slowed: float | None = None  # the fraction of its speed job.slow left it, while slowed
    round: int | None = None  # the rendezvous round of its world (None: the backend did not say)

    @property
    def current_pause(self) -> Paused | None:
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
    frozen: bool = False  # job.freeze_node stopped it (host and workers)
    where: str = "this machine"  # its placement, as the dashboard names it
    scheduler: str | None = None  # a scheduled node's last state: "queued: Slurm job 7 PENDING"
    leaving: bool = False  # it said it leaves (its scheduler's warning): gone, it has left


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
    world: int | None = None  # the rendezvous round of the world ``workers`` lists
    results_round: int | None = None  # the round of the world ``results`` came from
    stall: str | None = None  # the hang map's answer while the job makes no progress
    # held failures (``model.losses``): node -> the world it held in; worlds where a node
    # failed on its own (which releases the holders)
    holding: dict[int, int | None] = field(default_factory=dict)
    own_failure_worlds: set[int | None] = field(default_factory=set)
    checkpoints: list[Checkpoint] = field(default_factory=list)  # complete ones, oldest first

    @property
    def done(self) -> bool:
        return self.status.final

    @property
    def restart_count(self) -> int:
        return max((w.restart_count for w in self.workers.values()), default=0)

    def live_nodes(self) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n.status.live)

    def coming_nodes(self) -> list[int]:
        """Live nodes and those still queued: what the job will have if all arrive."""
        return sorted(i for i, n in self.nodes.items()
                      if n.status.live or n.status == NodeStatus.QUEUED)

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


def pause_location(pause: Paused) -> str:
    """``cell 7, line 4`` for a notebook cell, else ``file.py:12`` (in ``function``)."""
    if pause.cell is not None:
        return f"cell {pause.cell}, line {pause.line}"
    return f"{os.path.basename(pause.file)}:{pause.line} in {pause.function}"
