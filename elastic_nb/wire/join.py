"""Joining from another machine: the descriptor in the rendezvous store, and the handshake.

The Job publishes a ``JoinDescriptor`` (the packed call, the shared options
but the rendezvous configs, where it accepts nodes, a token) under the run's
key, signed with the job's key (``wire.auth``); ``python -m elastic_nb join``
reads it back (``from_json`` checks every field, and the signature when it
has the key) and connects. The Job opens with a ``JoinChallenge`` (a nonce
of its own, new for each connection); the node asks with a ``JoinRequest``;
the Job answers ``JoinAccepted`` (the node's index) or ``JoinRejected``
(why). Each is a checked record, with bounded fields.

A node that has the key (one the notebook started, or one joined with
``--key-file``) signs its request over the Job's challenge, a nonce of its
own and its ``ticket`` (the index the Job reserved for it, -1 for none), so a
captured request is worth nothing on another connection; it checks the Job's
signed answer, which carries the payload of a node that has a function of its
own and the job's rendezvous configs (secrets included: they never go into
the store). ``refused`` says the node will not run what the store held, and
why. Both ends then seal every frame with the session's key
(``auth.session_key`` over both nonces).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
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
    json_object,
    kind_of,
)


class HandshakeKind(StrEnum):
    """The handshake of a node that joins from another machine."""

    CHALLENGE = "challenge"
    JOIN = "join"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


MAX_NPROC = 4096
MAX_TEXT = 256  # role, host, token, nonces and reasons from a peer: anything longer is refused


@dataclass(frozen=True)
class JoinChallenge(FlatRecord, Message):
    """The Job's first words on a new connection: the nonce a signed request must cover."""

    kind: ClassVar[HandshakeKind] = HandshakeKind.CHALLENGE
    nonce: str


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
    challenge: str = ""  # the Job's nonce for this connection (JoinChallenge), signed over
    refused: str = ""
    pid: int = 0  # the node host's process (its group is the node's, on its machine)
    mac: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.nproc <= MAX_NPROC:
            raise ProtocolError(f"nproc must be an int between 1 and {MAX_NPROC}")
        if not self.role:
            raise ProtocolError("role must be a non-empty string")
        for name in ("token", "role", "host", "nonce", "challenge", "mac"):
            text = getattr(self, name)
            if len(text) > MAX_TEXT or not text.isascii() or not text.isprintable():
                raise ProtocolError(f"{name} must be printable ASCII of at most {MAX_TEXT} "
                                    "characters")
        if len(self.refused) > 16 * MAX_TEXT:
            raise ProtocolError("refused is too long")


@dataclass(frozen=True)
class JoinAccepted(Message):
    kind: ClassVar[HandshakeKind] = HandshakeKind.ACCEPTED
    node: int
    nonce: str = ""  # the request's, signed back
    payload: bytes = b""  # a scheduled node's own call ("": the descriptor's)
    # the job's rendezvous configs, for a node that signed (the descriptor has none)
    rdzv_configs: dict[str, Any] = field(default_factory=dict, repr=False)
    mac: str = ""

    def body(self) -> dict[str, Any]:
        return {"node": self.node, "nonce": self.nonce, "payload": encode_bytes(self.payload),
                "rdzv_configs": self.rdzv_configs, "mac": self.mac}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JoinAccepted:
        body = checked_fields(cls, message, "payload")
        return cls(**body, payload=decode_bytes(message.get("payload", "")))


@dataclass(frozen=True)
class JoinRejected(FlatRecord, Message):
    kind: ClassVar[HandshakeKind] = HandshakeKind.REJECTED
    reason: str


def parse_challenge(message: Any) -> JoinChallenge:
    if kind_of(message, HandshakeKind, "handshake") != HandshakeKind.CHALLENGE:
        raise ProtocolError("expected the job's challenge")
    return JoinChallenge.from_message(message)


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
        """The descriptor as the store holds it, signed with the job's ``key``. It carries no
        rendezvous configs: they may hold secrets (an etcd password) and the store is readable
        by whoever reaches it; a node brings its own, and the Job's answer to a node that
        signed carries the job's."""
        options = replace(self.options, rdzv_configs={})
        return json.dumps(auth.seal(key, {
            "payload": encode_bytes(self.payload), "job_address": self.job_address,
            "token": self.token, "options": options.to_message()}))

    @classmethod
    def from_json(cls, text: str | bytes, key: str | None = None) -> JoinDescriptor:
        """The descriptor the store held; with ``key``, only one the job signed (ProtocolError
        naming the danger otherwise: whoever wrote it could run code on this node)."""
        message = json_object(text, "the join descriptor")
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
