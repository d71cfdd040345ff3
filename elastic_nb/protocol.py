"""The one wire protocol between agent processes and the Job.

An agent and the Job talk over a stream socket (a socketpair for a local
node, TCP for a node that joined from another machine). Each message is one
JSON object on one line, at most ``MAX_FRAME_BYTES`` long, with a ``kind``.

* Reports (``ReportKind``) go from an agent to the Job; each kind has one
  typed record here, and ``parse_report`` is the dispatch table: a message of
  an unknown kind, or one missing a field, raises ``ProtocolError``.
* Commands (``CommandKind``) go from the Job to an agent.
* A node joining from another machine opens with a ``HandshakeKind.JOIN``
  and is answered ``ACCEPTED`` or ``REJECTED``.

Both sides import this module; neither imports the other.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

from elastic_nb.plan import JobOptions
from elastic_nb.strenum import StrEnum

MAX_FRAME_BYTES = 256 << 20  # one message; results and payloads are pickles, so be generous


class ProtocolError(ValueError):
    """A peer sent something that is not a message of this protocol."""


class ReportKind(StrEnum):
    """What an agent tells the Job."""

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


class CommandKind(StrEnum):
    """What the Job tells an agent."""

    CONFIGURE = "configure"  # run a node of a job on this host: its AgentConfig
    RESTART = "restart"  # restart the group now (reason user, budget untouched)
    SIGNAL = "signal"  # signal one of the node's workers (pid, signal)
    KILL = "kill"  # SIGKILL the whole node at once
    STOP = "stop"  # shut the node down as torch does on SIGTERM


class HandshakeKind(StrEnum):
    """The handshake of a node that joins from another machine."""

    JOIN = "join"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


def encode_bytes(data: bytes) -> str:
    """Bytes (a cloudpickle) as a JSON-safe string."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


# ----------------------------------------------------------------- reports

_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "str | None": (str, type(None)),
    "int | None": (int, type(None)), "float | None": (int, float, type(None)), "bool": (bool,),
}


def _flat(cls: Any, message: dict[str, Any], *skip: str) -> dict[str, Any]:
    """The fields of ``cls`` (but ``skip``) from ``message``, each of its declared scalar type."""
    values = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name not in message:
            raise ProtocolError(f"{cls.__name__} message has no field {f.name!r}")
        value = message[f.name]
        accepted = _SCALARS.get(str(f.type))
        wrong_bool = isinstance(value, bool) != (accepted is not None and bool in accepted)
        if accepted is not None and (not isinstance(value, accepted) or wrong_bool):
            raise ProtocolError(f"{cls.__name__}.{f.name} must be {f.type}, got {value!r}")
        values[f.name] = value
    return values


_R = TypeVar("_R", bound="_FlatRecord")


class _FlatRecord:
    """A record whose fields are all scalars: ``from_message`` checks and takes each one."""

    @classmethod
    def from_message(cls: type[_R], message: dict[str, Any]) -> _R:
        return cls(**_flat(cls, message))


def _records(cls: Any, message: dict[str, Any], name: str) -> tuple[Any, ...]:
    items = message.get(name)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProtocolError(f"field {name!r} must be a list of objects")
    return tuple(cls.from_message(item) for item in items)


@dataclass(frozen=True)
class FailureReport(_FlatRecord):
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
class StartedWorker(_FlatRecord):
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
class Rendezvous(_FlatRecord):
    kind: ClassVar[ReportKind] = ReportKind.RENDEZVOUS
    group_rank: int
    group_world_size: int
    world_size: int
    master_addr: str | None
    master_port: int | None


@dataclass(frozen=True)
class Started:
    kind: ClassVar[ReportKind] = ReportKind.STARTED
    role: str
    attempt: int
    restart_count: int
    group_rank: int
    group_world_size: int
    observed_at: float  # the agent's clock, as the workers started
    workers: tuple[StartedWorker, ...]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Started:
        return cls(**_flat(cls, message, "workers"),
                   workers=_records(StartedWorker, message, "workers"))


@dataclass(frozen=True)
class WorkerFailed:
    kind: ClassVar[ReportKind] = ReportKind.WORKER_FAILED
    restart_count: int
    remaining_restarts: int
    observed_at: float  # the agent's clock, as its monitor saw the failure
    failures: tuple[FailureReport, ...]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> WorkerFailed:
        return cls(**_flat(cls, message, "failures"),
                   failures=_records(FailureReport, message, "failures"))


@dataclass(frozen=True)
class Restarting(_FlatRecord):
    kind: ClassVar[ReportKind] = ReportKind.RESTARTING
    reason: str  # failure, membership or user
    remaining_restarts: int
    max_restarts: int
    observed_at: float  # the agent's clock, as it began stopping the group


@dataclass(frozen=True)
class Succeeded:
    kind: ClassVar[ReportKind] = ReportKind.SUCCEEDED
    restart_count: int
    return_values: dict[int, bytes]  # by global rank, each cloudpickled

    def to_message(self) -> dict[str, Any]:
        return {"restart_count": self.restart_count,
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
        return cls(**_flat(cls, message, "return_values"), return_values=decoded)


@dataclass(frozen=True)
class Failed:
    kind: ClassVar[ReportKind] = ReportKind.FAILED
    failures: tuple[FailureReport, ...]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Failed:
        return cls(failures=_records(FailureReport, message, "failures"))


@dataclass(frozen=True)
class AgentError(_FlatRecord):
    kind: ClassVar[ReportKind] = ReportKind.AGENT_ERROR
    message: str
    traceback: str | None


@dataclass(frozen=True)
class Log:
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
        return cls(**_flat(cls, message, "lines"), lines=tuple(lines))


@dataclass(frozen=True)
class Paused(_FlatRecord):
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
class Resumed(_FlatRecord):
    kind: ClassVar[ReportKind] = ReportKind.RESUMED
    rank: int
    observed_at: float


@dataclass(frozen=True)
class HostReady(_FlatRecord):
    kind: ClassVar[ReportKind] = ReportKind.HOST_READY
    pid: int


@dataclass(frozen=True)
class NodeDone(_FlatRecord):
    """The host's last report for a job: its node's exit code, and whether it can run another."""

    kind: ClassVar[ReportKind] = ReportKind.NODE_DONE
    exitcode: int
    reusable: bool


Report = (Rendezvous | Started | WorkerFailed | Restarting | Succeeded | Failed | AgentError | Log
          | Paused | Resumed | HostReady | NodeDone)
REPORTS: dict[ReportKind, Any] = {
    cls.kind: cls
    for cls in (Rendezvous, Started, WorkerFailed, Restarting, Succeeded, Failed, AgentError, Log,
                Paused, Resumed, HostReady, NodeDone)
}
"""The dispatch table: each report kind and the record it parses into."""


def parse_report(message: Any) -> Report:
    """The typed record of one report message; ProtocolError if it is not one."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
    try:
        kind = ReportKind(message.get("kind"))
    except ValueError:
        raise ProtocolError(f"unknown report kind {message.get('kind')!r}") from None
    return REPORTS[kind].from_message(message)


def report_message(report: Report) -> dict[str, Any]:
    """A report as the JSON object sent on the wire."""
    body = report.to_message() if isinstance(report, Succeeded) else asdict(report)
    return {"kind": report.kind.value, **body}


# ----------------------------------------------------------------- channel

class Channel:
    """A JSON-lines message channel over a connected stream socket.

    ``send`` is thread-safe. ``receive`` returns the next message, or None at
    end of stream (the peer exited or closed). A line longer than
    ``max_frame`` or one that is not JSON raises ``ProtocolError``.
    """

    def __init__(self, sock: socket.socket, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._sock = sock
        self._max_frame = max_frame
        self._send_lock = threading.Lock()
        self._buffer = b""
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, kind: str, **body: Any) -> None:
        data = json.dumps({"kind": kind, **body}, separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            self._sock.sendall(data)

    def send_report(self, report: Report) -> None:
        data = json.dumps(report_message(report), separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            self._sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """Block for the next whole message; None once the peer has gone."""
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
            self._check_frame()
        line, self._buffer = self._buffer.split(b"\n", 1)
        return self._decode(line)

    def receive_ready(self) -> tuple[list[dict[str, Any]], bool]:
        """Read what the socket has now (call when it is readable).

        Returns the whole messages received and whether the stream ended.
        """
        chunk = self._sock.recv(1 << 16)
        if chunk:
            self._buffer += chunk
        messages = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            messages.append(self._decode(line))
        self._check_frame()
        return messages, not chunk

    def _check_frame(self) -> None:
        if len(self._buffer) > self._max_frame:
            self._buffer = b""
            raise ProtocolError(f"a message longer than {self._max_frame} bytes")

    def _decode(self, line: bytes) -> dict[str, Any]:
        if len(line) > self._max_frame:
            raise ProtocolError(f"a message longer than {self._max_frame} bytes")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"not a JSON message: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
        return message

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()


# ------------------------------------------------------------ agent config

@dataclass(frozen=True)
class AgentConfig:
    """Everything an agent process needs to run one node of a job.

    The Job sends it to a local host (``CONFIGURE``), once per job the host
    runs; a node joining from another machine builds it from the join descriptor.
    ``payload`` is the cloudpickled function call the workers run.
    """

    node: int
    role: str
    nproc: int
    payload: bytes
    run_id: str
    backend: str
    endpoint: str
    options: JobOptions
    log_dir: str
    local_addr: str | None
    tee: bool = False
    # a local host takes on the kernel's environment, sys.path and cwd for each job
    env: dict[str, str] | None = None
    sys_path: list[str] | None = None
    cwd: str | None = None

    def to_message(self) -> dict[str, Any]:
        return {**asdict(self), "payload": encode_bytes(self.payload)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> AgentConfig:
        body = {k: v for k, v in message.items() if k != "kind"}
        body["payload"] = decode_bytes(body["payload"])
        body["options"] = JobOptions.from_message(body["options"])
        return cls(**body)
