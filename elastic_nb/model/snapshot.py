"""The one read model: a frozen ``JobSnapshot`` of a job at one moment.

``Job.snapshot()`` builds it under the Job's lock from the plan, the state,
the log book's last-line times and the supervisor's CPU/RSS samples (local
workers only). Every view renders from it: ``summary()``, the HTML repr, the
dashboard and the magics. No view reads the Job's internals or touches a
process.
"""

from __future__ import annotations

from dataclasses import dataclass

from elastic_nb.model.checkpoints import Checkpoint
from elastic_nb.model.errors import RankFailure, ordered_failures
from elastic_nb.model.plan import JobPlan
from elastic_nb.model.state import (
    Event,
    JobState,
    JobStatus,
    NodeStatus,
    WorkerStatus,
    pause_location,
)


@dataclass(frozen=True)
class WorkerView:
    """One worker of the current attempt, where it runs and how it is doing."""

    rank: int
    local_rank: int
    role: str
    group_rank: int
    node: int
    host: str
    local: bool  # on this machine (CPU/RSS are sampled only then)
    pid: int
    state: WorkerStatus
    restart_count: int
    attempt: int
    world_size: int
    started_at: float
    last_output: float | None  # when it last printed a line
    cpu_percent: float | None
    rss: int | None
    paused_at: str | None = None  # "cell 7, line 4" while it waits in its debugger
    pause_reason: str | None = None  # breakpoint or post_mortem
    frozen: bool = False  # stopped by job.freeze or its node's freeze
    slowed: float | None = None  # the fraction of its speed job.slow left it


@dataclass(frozen=True)
class NodeView:
    index: int
    nproc: int
    role: str
    host: str
    local: bool
    status: NodeStatus
    error: str | None
    host_pid: int | None = None  # a local node's host process
    warm: bool = False  # its host had served an earlier job (no interpreter or torch import)
    frozen: bool = False  # job.freeze_node stopped it
    where: str = "this machine"  # its placement (Slurm, ssh HOST)
    scheduler: str | None = None  # a scheduled node's last state: "queued: Slurm job 7 PENDING"


@dataclass(frozen=True)
class JobSnapshot:
    """A job at one moment: what every view shows."""

    run_id: str
    backend: str
    endpoint: str
    log_dir: str
    prefix_template: str
    taken_at: float
    status: JobStatus
    started_at: float
    finished_at: float | None
    max_restarts: int
    restart_count: int
    planned_world_size: int  # the ranks of the nodes planned at launch
    live_world_size: int  # the ranks of the nodes live now
    nodes: tuple[NodeView, ...]
    workers: tuple[WorkerView, ...]  # by rank
    events: tuple[Event, ...]  # in time order, failures attached
    failures: tuple[RankFailure, ...]  # those that ended the job, first cause first
    failure_history: tuple[RankFailure, ...]
    error: str | None
    idle_hosts: int = 0  # this kernel's warm hosts waiting for a launch, as the snapshot was taken
    stall: str | None = None  # the hang map's answer while the job makes no progress
    trust_store: bool = False  # keyless nodes admitted: whoever reaches the store runs code
    checkpoints: tuple[Checkpoint, ...] = ()  # complete ones in its checkpoint_dir, oldest first

    @property
    def done(self) -> bool:
        return self.status.final

    @property
    def elapsed(self) -> float:
        return (self.finished_at or self.taken_at) - self.started_at

    @property
    def attempt(self) -> int:
        return max((w.attempt for w in self.workers), default=0)

    @property
    def world_size(self) -> int:
        """The current attempt's world, or before one started, the ranks of the live nodes."""
        return max((w.world_size for w in self.workers), default=0) or self.live_world_size

    @property
    def first_failure(self) -> RankFailure | None:
        return self.failures[0] if self.failures else None

    @property
    def newest_checkpoint(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def live_nodes(self) -> list[int]:
        return [n.index for n in self.nodes if n.status.live]


def build(plan: JobPlan, endpoint: str, state: JobState, last_output: dict[int, float],
          stats: dict[int, tuple[float, int]], now: float, idle_hosts: int = 0) -> JobSnapshot:
    """The snapshot of ``state``; ``stats`` are CPU%/RSS of local workers by pid."""
    nodes = {i: n for i, n in state.nodes.items()}
    workers = []
    for rank, w in sorted(state.workers.items()):
        node = nodes[w.node]
        usage = stats.get(w.pid) if node.local and w.state.alive else None
        pause = w.current_pause
        workers.append(WorkerView(
            rank=rank, local_rank=w.local_rank, role=w.role, group_rank=w.group_rank,
            node=w.node, host=node.host, local=node.local, pid=w.pid, state=w.state,
            restart_count=w.restart_count, attempt=w.attempt, world_size=w.world_size,
            started_at=w.started_at, last_output=last_output.get(rank),
            cpu_percent=usage[0] if usage else None, rss=usage[1] if usage else None,
            paused_at=pause_location(pause) if pause else None,
            pause_reason=pause.reason if pause else None, frozen=w.frozen, slowed=w.slowed))
    return JobSnapshot(
        run_id=plan.run_id, backend=plan.backend, endpoint=endpoint, log_dir=plan.log_dir,
        prefix_template=plan.options.log_line_prefix_template, taken_at=now,
        status=state.status, started_at=state.started_at, finished_at=state.finished_at,
        max_restarts=plan.options.max_restarts, restart_count=state.restart_count,
        planned_world_size=plan.world_size, live_world_size=state.live_world_size(),
        nodes=tuple(NodeView(n.index, n.nproc, n.role, n.host, n.local, n.status, n.error,
                             n.host_pid, n.warm, n.frozen, n.where, n.scheduler)
                    for _, n in sorted(nodes.items())),
        workers=tuple(workers), events=tuple(state.events),
        failures=ordered_failures(state.failures.values()),
        failure_history=tuple(state.failure_history), error=state.error, idle_hosts=idle_hosts,
        stall=state.stall, trust_store=plan.options.trust_store,
        checkpoints=tuple(state.checkpoints))
