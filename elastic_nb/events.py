"""The one wire protocol between agent processes and the Job.

An agent process and the Job in the kernel talk over a stream socket (a
socketpair for local nodes). Each message is one JSON object on one line.
Agents send reports (``rendezvous``, ``started``, ``worker_failed``,
``restarting``, ``succeeded``, ``failed``, ``agent_error``); the Job sends
commands (``restart``). Both sides import this module; neither imports the
other.

``Event`` is the public, time-stamped record the Job keeps of everything that
happened to a job, whether reported by an agent or done by the user.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Reports an agent sends to the Job.
RENDEZVOUS = "rendezvous"
STARTED = "started"
WORKER_FAILED = "worker_failed"
RESTARTING = "restarting"
SUCCEEDED = "succeeded"
FAILED = "failed"
AGENT_ERROR = "agent_error"
LOG = "log"  # lines a joined node's ranks printed (its files are not on the kernel's machine)

# Commands the Job sends to an agent.
RESTART = "restart"
SIGNAL = "signal"  # signal one of the node's workers (pid, signal)
KILL = "kill"  # SIGKILL the whole node at once
STOP = "stop"  # shut the node down as torch does on SIGTERM

# The handshake of a node that joins from another machine.
JOIN = "join"
ACCEPTED = "accepted"
REJECTED = "rejected"

# Event kinds the Job adds on its own.
LAUNCHED = "launched"
KILLED = "killed"
STOPPED = "stopped"
NODE_EXITED = "node_exited"
NODE_KILLED = "node_killed"
NODE_ADDED = "node_added"
MEMBERSHIP_CHANGED = "membership_changed"
JOIN_UNAVAILABLE = "join_unavailable"


@dataclass(frozen=True)
class Event:
    """One thing that happened to a job, in time order.

    ``node`` is the node index and ``rank`` the global rank the event concerns,
    or None when it concerns the whole job (or node).
    """

    time: float
    kind: str
    node: int | None = None
    rank: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

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


def encode_bytes(data: bytes) -> str:
    """Bytes (a cloudpickle) as a JSON-safe string."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


class Channel:
    """A JSON-lines message channel over a connected stream socket.

    ``send`` is thread-safe. ``receive`` returns the next message, or None at
    end of stream (the peer exited or closed).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._buffer = b""
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, kind: str, **fields: Any) -> None:
        data = json.dumps({"kind": kind, **fields}, separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            self._sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """Block for the next whole message; None once the peer has gone."""
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

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
            messages.append(json.loads(line))
        return messages, not chunk

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()


@dataclass
class JobOptions:
    """The settings every node of one job shares, whoever started the node.

    The Job builds it once from ``launch()``'s arguments; each agent's
    ``AgentConfig`` carries it, and the join descriptor publishes it for
    nodes that join from another machine.
    """

    min_nodes: int
    max_nodes: int
    max_restarts: int
    monitor_interval: float
    exit_barrier_timeout: float
    rdzv_timeout: float
    rdzv_configs: dict[str, Any]
    start_method: str
    log_line_prefix_template: str | None
    master_addr: str | None
    master_port: int | None
    shutdown_timeout: int

    def to_message(self) -> dict[str, Any]:
        return {**self.__dict__, "rdzv_configs": dict(self.rdzv_configs)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JobOptions:
        return cls(**message)


@dataclass
class AgentConfig:
    """Everything an agent process needs to run one node of a job.

    The Job sends it as the first message on the channel (kind ``configure``);
    a node joining from another machine builds it from the join descriptor.
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

    def to_message(self) -> dict[str, Any]:
        return {**self.__dict__, "payload": encode_bytes(self.payload),
                "options": self.options.to_message()}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> AgentConfig:
        fields = {k: v for k, v in message.items() if k != "kind"}
        fields["payload"] = decode_bytes(fields["payload"])
        fields["options"] = JobOptions.from_message(fields["options"])
        return cls(**fields)


CONFIGURE = "configure"
