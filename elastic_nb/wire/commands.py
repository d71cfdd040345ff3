"""Commands: what the Job tells a node host, one typed record per kind.

``COMMANDS`` is the dispatch table the host reads with (``parse_command``):
an unknown kind, a missing or mistyped field, a restart reason or signal
name that does not exist, all raise ``ProtocolError`` before the host acts.
Besides running and faulting the node, the Job asks a joined node's host for
what only its machine can read: its ranks' stacks (``DumpStacks``) and hang
answers (``AskHang``), each answered by a report with the same ``request``
number, and relays a pdb session to a paused rank's debugger
(``DebugOpen``, ``DebugInput``, ``DebugClose``; the host answers with
``DebugOutput`` and ``DebugEnded``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, ClassVar

from elastic_nb.model.strenum import StrEnum
from elastic_nb.wire.config import AgentConfig
from elastic_nb.wire.rank_files import RankTarget
from elastic_nb.wire.records import (
    DataRecord,
    FlatRecord,
    Message,
    ProtocolError,
    checked_fields,
    kind_of,
    records,
)


class CommandKind(StrEnum):
    """What the Job tells a node host."""

    CONFIGURE = "configure"  # run a node of a job on this host: its AgentConfig
    RESTART = "restart"  # restart the group now (reason user or membership, budget untouched)
    SIGNAL = "signal"  # signal one of the node's workers (pid, signal)
    KILL = "kill"  # SIGKILL the whole node at once
    STOP = "stop"  # shut the node down as torch does on SIGTERM
    HEARTBEAT = "heartbeat"  # the Job is alive (a joined node that stops hearing it leaves)
    SLOW = "slow"  # run one worker at a fraction of its speed (a straggler), 1.0 ends it
    FREEZE = "freeze"  # stop (or continue) the node's workers and its heartbeats: it goes silent
    DUMP_STACKS = "dump_stacks"  # dump these workers' stacks here; answer with Stacks
    ASK_HANG = "ask_hang"  # ask these workers for their flight recorders; answer with HangAnswers
    DEBUG_OPEN = "debug_open"  # relay a pdb session to a paused rank's debugger socket
    DEBUG_INPUT = "debug_input"  # what the client typed into a relayed session
    DEBUG_CLOSE = "debug_close"  # the client left a relayed session (the rank resumes)


RESTART_REASONS = ("user", "membership", "failure")  # failure: a held failure is released


@dataclass(frozen=True)
class Configure(Message):
    kind: ClassVar[CommandKind] = CommandKind.CONFIGURE
    config: AgentConfig

    def body(self) -> dict[str, Any]:
        return {"config": self.config.to_message()}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Configure:
        body = message.get("config")
        if not isinstance(body, dict):
            raise ProtocolError("field 'config' must be an object")
        return cls(AgentConfig.from_message(body))


@dataclass(frozen=True)
class Restart(FlatRecord, Message):
    kind: ClassVar[CommandKind] = CommandKind.RESTART
    reason: str

    def __post_init__(self) -> None:
        if self.reason not in RESTART_REASONS:
            raise ProtocolError(f"restart reason must be one of {RESTART_REASONS}, "
                                f"not {self.reason!r}")


@dataclass(frozen=True)
class Signal(FlatRecord, Message):
    kind: ClassVar[CommandKind] = CommandKind.SIGNAL
    pid: int
    signal: str  # a name of signal.Signals, e.g. SIGKILL

    def __post_init__(self) -> None:
        if self.signal not in signal.Signals.__members__:
            raise ProtocolError(f"unknown signal {self.signal!r}")


@dataclass(frozen=True)
class Kill(FlatRecord, Message):
    kind: ClassVar[CommandKind] = CommandKind.KILL


@dataclass(frozen=True)
class Stop(FlatRecord, Message):
    """Stop the node of job ``run_id`` (a stop that crossed that job's end must not stop the
    next job on a warm host)."""

    kind: ClassVar[CommandKind] = CommandKind.STOP
    run_id: str


@dataclass(frozen=True)
class Heartbeat(FlatRecord, Message):
    kind: ClassVar[CommandKind] = CommandKind.HEARTBEAT


@dataclass(frozen=True)
class Slow(FlatRecord, Message):
    """Stop and continue worker ``pid`` so that it runs ``fraction`` of the time."""

    kind: ClassVar[CommandKind] = CommandKind.SLOW
    pid: int
    fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ProtocolError(f"a slow fraction must be in (0, 1], not {self.fraction!r}")


@dataclass(frozen=True)
class Freeze(FlatRecord, Message):
    """Freeze (``frozen``) or thaw the node: its workers stop and it sends nothing."""

    kind: ClassVar[CommandKind] = CommandKind.FREEZE
    frozen: bool


@dataclass(frozen=True)
class _RankRequest(Message):
    """Request ``request`` about the node's workers ``ranks``: each answered within
    ``timeout`` seconds, or said to have given no answer."""

    request: int
    ranks: tuple[RankTarget, ...]
    timeout: float

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ProtocolError(f"a request's timeout must be > 0, not {self.timeout!r}")

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Any:
        return cls(**checked_fields(cls, message, "ranks"),
                   ranks=records(RankTarget, message, "ranks"))


@dataclass(frozen=True)
class DumpStacks(_RankRequest):
    kind: ClassVar[CommandKind] = CommandKind.DUMP_STACKS


@dataclass(frozen=True)
class AskHang(_RankRequest):
    kind: ClassVar[CommandKind] = CommandKind.ASK_HANG


@dataclass(frozen=True)
class DebugOpen(FlatRecord, Message):
    """Open relayed pdb session ``session`` on rank ``rank``'s debugger at ``socket`` (the
    path its ``Paused`` report gave, on the node's machine)."""

    kind: ClassVar[CommandKind] = CommandKind.DEBUG_OPEN
    session: int
    rank: int
    socket: str


@dataclass(frozen=True)
class DebugInput(DataRecord):
    kind: ClassVar[CommandKind] = CommandKind.DEBUG_INPUT
    session: int
    data: bytes


@dataclass(frozen=True)
class DebugClose(FlatRecord, Message):
    kind: ClassVar[CommandKind] = CommandKind.DEBUG_CLOSE
    session: int


Command = (Configure | Restart | Signal | Kill | Stop | Heartbeat | Slow | Freeze | DumpStacks
           | AskHang | DebugOpen | DebugInput | DebugClose)
COMMANDS: dict[CommandKind, Any] = {
    cls.kind: cls for cls in (Configure, Restart, Signal, Kill, Stop, Heartbeat, Slow, Freeze,
                              DumpStacks, AskHang, DebugOpen, DebugInput, DebugClose)}
"""The dispatch table: each command kind and the record it parses into."""


def parse_command(message: Any) -> Command:
    """The typed record of one command message; ProtocolError if it is not one."""
    return COMMANDS[kind_of(message, CommandKind, "command")].from_message(message)
