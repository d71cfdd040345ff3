"""Joining from another machine: the descriptor in the rendezvous store, and the handshake.

The Job publishes a ``JoinDescriptor`` (the packed call, the shared options,
where it accepts nodes, a token) under the run's key, signed with the job's
key (``wire.auth``); ``python -m elastic_nb join`` reads it back
(``from_json`` checks every field, and the signature when it has the key),
connects and opens with a ``JoinRequest``; the Job answers ``JoinAccepted``
(the node's index) or ``JoinRejected`` (why). Each is a checked record.

A node that has the key (one the notebook started, or one joined with
``--key-file``) signs its request over a fresh nonce and its ``ticket`` (the
index the Job reserved for it, -1 for none) and checks the Job's signed
answer, which carries the payload of a node that has a function of its own;
``refused`` says the node will not run what the store held, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from elastic_nb.model.strenum import StrEnum
from elastic_nb.wire import auth
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
    ticket: int = -1
    nonce: str = ""
    refused: str = ""
    pid: int = 0  # the node host's process (its group is the node's, on its machine)
    mac: str = ""

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ProtocolError("nproc must be an int >= 1")
        if not self.role:
            raise ProtocolError("role must be a non-empty string")


@dataclass(frozen=True)
class JoinAccepted(Message):
    kind: ClassVar[HandshakeKind] = HandshakeKind.ACCEPTED
    node: int
    nonce: str = ""  # the request's, signed back
    payload: bytes = b""  # a scheduled node's own call ("": the descriptor's)
    mac: str = ""

    def body(self) -> dict[str, Any]:
        return {"node": self.node, "nonce": self.nonce, "payload": encode_bytes(self.payload),
                "mac": self.mac}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JoinAccepted:
        body = checked_fields(cls, message, "payload")
        return cls(**body, payload=decode_bytes(message.get("payload", "")))


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

    def to_json(self, key: str) -> str:
        """The descriptor as the store holds it, signed with the job's ``key``."""
        return json.dumps(auth.seal(key, {
            "payload": encode_bytes(self.payload), "job_address": self.job_address,
            "token": self.token, "options": self.options.to_message()}))

    @classmethod
    def from_json(cls, text: str | bytes, key: str | None = None) -> JoinDescriptor:
        """The descriptor the store held; with ``key``, only one the job signed (ProtocolError
        naming the danger otherwise: whoever wrote it could run code on this node)."""
        try:
            message = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"the join descriptor is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError("the join descriptor must be a JSON object")
        if key is not None:
            try:
                message = auth.unseal(key, message, "the join descriptor in the rendezvous store")
            except ProtocolError as exc:
                raise ProtocolError(f"{exc}: someone else wrote it, and nothing of it is run "
                                    "(protect the rendezvous store)") from None
        message.pop("mac", None)
        body = checked_fields(cls, message, "payload", "options")
        if "payload" not in message or "options" not in message:
            raise ProtocolError("the join descriptor needs 'payload' and 'options'")
        if body["job_address"].rpartition(":")[2].isdigit() is False:
            raise ProtocolError(f"job_address {body['job_address']!r} is not host:port")
        return cls(**body, payload=decode_bytes(message["payload"]),
                   options=JobOptions.from_message(message["options"]))
