"""Reports: what a node host tells the Job, one typed record per kind.

Each ``ReportKind`` has one record here, and ``REPORTS`` is the dispatch
table: ``parse_report`` turns a message into its record, or raises
``ProtocolError`` for an unknown kind or a missing or mistyped field. The
kernel's pump dispatches on the record's kind (``kernel.pump``); the state
rules take the records as they are (``model.rules``). A joined node's host
also answers the Job's requests (``Stacks``, ``HangAnswers``: the
``request`` number of the command they answer) and carries its relayed pdb
sessions (``DebugOutput``, ``DebugEnded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from elastic_nb.model.strenum import StrEnum
from elastic_nb.wire.rank_files import RankAnswer
from elastic_nb.wire.records import (
    DataRecord,
    FlatRecord,
    Message,
    ProtocolError,
    checked_fields,
    decode_bytes,
    encode_bytes,
    kind_of,
    records,
)


class ReportKind(StrEnum):
    """What a node host tells the Job."""

    RENDEZVOUS = "rendezvous"  # a rendezvous round admitted this node
    STARTED = "started"  # workers of a new attempt started (ranks, pids, log files)
    WORKER_FAILED = "worker_failed"  # the monitor saw workers fail
    RESTARTING = "restarting"  # the group is being restarted (failure, membership, user)
    SUCCEEDED = "succeeded"  # every worker returned (the return values)
    FAILED = "failed"  # the node gave up: restart budget spent (the failures)
    AGENT_ERROR = "agent_error"  # the agent itself could not go on
    LOG = "log"  # lines a joined node's ranks printed (its files are on its machine)
    PAUSED = "paused"  # a rank stopped in its debugger (breakpoint or post-mortem)
    RESUMED = "resumed"  # ... and went on (or ended)
    HOST_READY = "host_ready"  # a new host is up (torch imported): it can take a job
    NODE_DONE = "node_done"  # the host finished its node of the job (it may serve the next job)
    HEARTBEAT = "heartbeat"  # the host is alive (a few a second while it runs a node)
    LEAVING = "leaving"  # its scheduler warned of the end (time limit, preemption): it leaves
    STACKS = "stacks"  # the stacks of the workers a DumpStacks named, by rank
    HANG_ANSWERS = "hang_answers"  # the answers of the workers an AskHang named
    DEBUG_OUTPUT = "debug_output"  # what a relayed pdb session printed
    DEBUG_ENDED = "debug_ended"  # a relayed pdb session is over (or never opened: why)
    STATE_FORGED = "state_forged"  # the rendezvous store held a state the job did not sign


# ----------------------------------------------------------------- reports

@dataclass(frozen=True)
class FailureReport(FlatRecord):
    """How one worker failed, as torch's error file or exit code tells it."""

    rank: int
    local_rank: int
    pid: int | None
    exitcode: int
    signal: str | None
    message: str
    traceback: str | None
    timestamp: float
    restart_count: int


@dataclass(frozen=True)
class StartedWorker(FlatRecord):
    """One worker of a new attempt: its ranks, pid and files."""

    rank: int
    local_rank: int
    role_rank: int
    world_size: int
    role_world_size: int
    pid: int
    stdout: str
    stderr: str
    error_file: str


@dataclass(frozen=True)
class Rendezvous(FlatRecord, Message):
    kind: ClassVar[ReportKind] = ReportKind.RENDEZVOUS
    group_rank: int
    group_world_size: int
    world_size: int
    master_addr: str | None
    master_port: int | None


@dataclass(frozen=True)
class Started(Message):
    kind: ClassVar[ReportKind] = ReportKind.STARTED
    role: str
    attempt: int
    restart_count: int
    group_rank: int
    group_world_size: int
    observed_at: float  # the agent's clock, as the workers started
    workers: tuple[StartedWorker, ...]
    # the rendezvous round these workers' world formed in (the same number on every node of
    # that world); None where the backend does not tell it (torch's etcd v1 handler)
    round: int | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Started:
        return cls(**checked_fields(cls, message, "workers"),
                   workers=records(StartedWorker, message, "workers"))


@dataclass(frozen=True)
class WorkerFailed(Message):
    kind: ClassVar[ReportKind] = ReportKind.WORKER_FAILED
    restart_count: int
    remaining_restarts: int
    observed_at: float  # the agent's clock, as its monitor saw the failure
    failures: tuple[FailureReport, ...]
    # every rank failed on a broken connection to a peer: the agent waits for the Job's
    # verdict before it spends a restart (``model.losses``)
    held: bool = False

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> WorkerFailed:
        return cls(**checked_fields(cls, message, "failures"),
                   failures=records(FailureReport, message, "failures"))


@dataclass(frozen=True)
class Restarting(FlatRecord, Message):
    kind: ClassVar[ReportKind] = ReportKind.RESTARTING
    reason: str  # failure, membership or user
    remaining_restarts: int
    max_restarts: int
    observed_at: float  # the agent's clock, as it began stopping the group


@dataclass(frozen=True)
class Succeeded(Message):
    kind: ClassVar[ReportKind] = ReportKind.SUCCEEDED
    restart_count: int
    return_values: dict[int, bytes]  # by global rank, each cloudpickled
    round: int | None = None  # the rendezvous round of the world that returned them

    def body(self) -> dict[str, Any]:
        return {"restart_count": self.restart_count, "round": self.round,
                "return_values": {str(r): encode_bytes(v) for r, v in self.return_values.items()}}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Succeeded:
        values = message.get("return_values")
        if not isinstance(values, dict):
            raise ProtocolError("field 'return_values' must be an object")
        try:
            decoded = {int(rank): decode_bytes(blob) for rank, blob in values.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"bad return_values: {exc}") from None
        return cls(**checked_fields(cls, message, "return_values"), return_values=decoded)


@dataclass(frozen=True)
class Failed(Message):
    kind: ClassVar[ReportKind] = ReportKind.FAILED
    failures: tuple[FailureReport, ...]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Failed:
        return cls(failures=records(FailureReport, message, "failures"))


@dataclass(frozen=True)
class AgentError(FlatRecord, Message):
    kind: ClassVar[ReportKind] = ReportKind.AGENT_ERROR
    message: str
    traceback: str | None


@dataclass(frozen=True)
class Log(Message):
    kind: ClassVar[ReportKind] = ReportKind.LOG
    rank: int
    stream: str
    attempt: int
    lines: tuple[str, ...]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Log:
        lines = message.get("lines")
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise ProtocolError("field 'lines' must be a list of strings")
        if message.get("stream") not in ("stdout", "stderr"):
            raise ProtocolError("field 'stream' must be 'stdout' or 'stderr'")
        return cls(**checked_fields(cls, message, "lines"), lines=tuple(lines))


@dataclass(frozen=True)
class Paused(FlatRecord, Message):
    """A rank waits in its debugger (``rank_debugger``) for ``job.debug(rank)``."""

    kind: ClassVar[ReportKind] = ReportKind.PAUSED
    rank: int
    reason: str  # breakpoint or post_mortem
    file: str
    line: int
    function: str
    source: str  # the source line it stopped at
    cell: int | None  # the notebook cell (execution count) that file is
    exception: str | None  # post-mortem: the error, in one line
    socket: str  # where its debugger listens, on the node's machine
    observed_at: float


@dataclass(frozen=True)
class Resumed(FlatRecord, Message):
    kind: ClassVar[ReportKind] = ReportKind.RESUMED
    rank: int
    observed_at: float


@dataclass(frozen=True)
class HostReady(FlatRecord, Message):
    kind: ClassVar[ReportKind] = ReportKind.HOST_READY
    pid: int


@dataclass(frozen=True)
class NodeDone(FlatRecord, Message):
    """The host's last report for a job: its node's exit code, and whether it can run another."""

    kind: ClassVar[ReportKind] = ReportKind.NODE_DONE
    exitcode: int
    reusable: bool


@dataclass(frozen=True)
class Heartbeat(FlatRecord, Message):
    kind: ClassVar[ReportKind] = ReportKind.HEARTBEAT


@dataclass(frozen=True)
class Leaving(FlatRecord, Message):
    """The node leaves the job on its own: ``reason`` is its scheduler's warning."""

    kind: ClassVar[ReportKind] = ReportKind.LEAVING
    reason: str


@dataclass(frozen=True)
class Stacks(Message):
    kind: ClassVar[ReportKind] = ReportKind.STACKS
    request: int
    stacks: dict[int, str]  # by global rank: every thread's stack, or why there is none

    def body(self) -> dict[str, Any]:
        return {"request": self.request, "stacks": {str(r): t for r, t in self.stacks.items()}}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Stacks:
        stacks = message.get("stacks")
        if not isinstance(stacks, dict) or not all(isinstance(t, str) for t in stacks.values()):
            raise ProtocolError("field 'stacks' must be an object of strings")
        try:
            by_rank = {int(rank): text for rank, text in stacks.items()}
        except ValueError as exc:
            raise ProtocolError(f"bad stacks: {exc}") from None
        return cls(**checked_fields(cls, message, "stacks"), stacks=by_rank)


@dataclass(frozen=True)
class HangAnswers(Message):
    kind: ClassVar[ReportKind] = ReportKind.HANG_ANSWERS
    request: int
    answers: tuple[RankAnswer, ...]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> HangAnswers:
        return cls(**checked_fields(cls, message, "answers"),
                   answers=records(RankAnswer, message, "answers"))


@dataclass(frozen=True)
class DebugOutput(DataRecord):
    kind: ClassVar[ReportKind] = ReportKind.DEBUG_OUTPUT
    session: int
    data: bytes  # as the rank's debugger wrote it (a chunk may end inside a character)


@dataclass(frozen=True)
class DebugEnded(FlatRecord, Message):
    """The rank's debugger closed the session (it went on, ended, or refused a second
    client), or ``error``: the host could not connect to it."""

    kind: ClassVar[ReportKind] = ReportKind.DEBUG_ENDED
    session: int
    error: str | None


@dataclass(frozen=True)
class StateForged(FlatRecord, Message):
    """The agent read a rendezvous state not signed with the job's key (``rendezvous.signed``):
    it ran none of it; ``where`` names the store."""

    kind: ClassVar[ReportKind] = ReportKind.STATE_FORGED
    where: str


Report = (Rendezvous | Started | WorkerFailed | Restarting | Succeeded | Failed | AgentError | Log
          | Paused | Resumed | HostReady | NodeDone | Heartbeat | Leaving | Stacks | HangAnswers
          | DebugOutput | DebugEnded | StateForged)
REPORTS: dict[ReportKind, Any] = {
    cls.kind: cls
    for cls in (Rendezvous, Started, WorkerFailed, Restarting, Succeeded, Failed, AgentError, Log,
                Paused, Resumed, HostReady, NodeDone, Heartbeat, Leaving, Stacks, HangAnswers,
                DebugOutput, DebugEnded, StateForged)
}
"""The dispatch table: each report kind and the record it parses into."""


def parse_report(message: Any) -> Report:
    """The typed record of one report message; ProtocolError if it is not one."""
    return REPORTS[kind_of(message, ReportKind, "report")].from_message(message)


