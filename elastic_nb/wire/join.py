"""Joining from another machine: the descriptor in the rendezvous store, and the handshake.

The Job publishes a ``JoinDescriptor`` (the packed call, the shared options,
where it accepts nodes, a token) under the run's key; ``python -m
elastic_nb join`` reads it back (``from_json`` checks every field), connects
and opens with a ``JoinRequest``; the Job answers ``JoinAccepted`` (the
node's index) or ``JoinRejected`` (why). Each is a checked record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from elastic_nb.model.strenum import StrEnum
from elastic_nb.wire.options import JobOptions
from elastic_nb.wire.records import (
    FlatRecord,
    Message,
    ProtocolError,
    checked_fields,
    decode_bytes,
    encode_bytes,
    kind_of,
)


class HandshakeKind(StrEnum):
    """The handshake of a node that joins from another machine."""

    JOIN = "join"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class JoinRequest(FlatRecord, Message):
    """A node asks to join: the token it read from the store, its size, role and host name."""

    kind: ClassVar[HandshakeKind] = HandshakeKind.JOIN
    token: str
    nproc: int
    role: str
    host: str = "?"

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ProtocolError("nproc must be an int >= 1")
        if not self.role:
            raise ProtocolError("role must be a non-empty string")


@dataclass(frozen=True)
class JoinAccepted(FlatRecord, Message):
    kind: ClassVar[HandshakeKind] = HandshakeKind.ACCEPTED
    node: int


@dataclass(frozen=True)
class JoinRejected(FlatRecord, Message):
    kind: ClassVar[HandshakeKind] = HandshakeKind.REJECTED
    reason: str


def parse_request(message: Any) -> JoinRequest:
    if kind_of(message, HandshakeKind, "handshake") != HandshakeKind.JOIN:
        raise ProtocolError("expected a join request")
    return JoinRequest.from_message(message)


def parse_reply(message: Any) -> JoinAccepted | JoinRejected:
    kind = kind_of(message, HandshakeKind, "handshake")
    if kind == HandshakeKind.ACCEPTED:
        return JoinAccepted.from_message(message)
    if kind == HandshakeKind.REJECTED:
        return JoinRejected.from_message(message)
    raise ProtocolError(f"expected the job's answer, got {kind}")


@dataclass(frozen=True)
class JoinDescriptor:
    """What a joining node reads from the rendezvous store to find and run the job."""

    payload: bytes
    job_address: str  # host:port of the Job's join server
    token: str
    options: JobOptions

    def to_json(self) -> str:
        return json.dumps({"payload": encode_bytes(self.payload), "job_address": self.job_address,
                           "token": self.token, "options": self.options.to_message()})

    @classmethod
    def from_json(cls, text: str | bytes) -> JoinDescriptor:
        try:
            message = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"the join descriptor is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError("the join descriptor must be a JSON object")
        body = checked_fields(cls, message, "payload", "options")
        if "payload" not in message or "options" not in message:
            raise ProtocolError("the join descriptor needs 'payload' and 'options'")
        if body["job_address"].rpartition(":")[2].isdigit() is False:
            raise ProtocolError(f"job_address {body['job_address']!r} is not host:port")
        return cls(**body, payload=decode_bytes(message["payload"]),
                   options=JobOptions.from_message(message["options"]))
