"""Nodes from other machines: the listener, the join token and the handshakes.

The Job publishes a join descriptor (the packed call, the options, this
server's address and a token) in the rendezvous store; ``python -m elastic_nb
join`` reads it, connects here and sends one ``join`` message. Each
handshake runs on a thread of its own under a deadline, so a peer that
connects and says nothing, trickles bytes or sends garbage costs a thread
for a few seconds, never the Job's pump. An accepted node's channel is handed
to the Job (``admit``), which reads it from then on.
"""

from __future__ import annotations

import json
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from elastic_nb.protocol import Channel, HandshakeKind, ProtocolError

HANDSHAKE_TIMEOUT = 10.0
MAX_HANDSHAKE_BYTES = 64 << 10


class JoinRefused(Exception):
    """The Job will not take this node; the message says why (sent to the node)."""


Admit = Callable[[dict[str, Any], Channel], int]
"""Called with a join request whose token matched: the node's index, or JoinRefused."""


class JoinServer:
    """Accepts nodes that join from other machines, on ``listen_addr`` only."""

    def __init__(self, listen_addr: str, admit: Admit, name: str,
                 handshake_timeout: float | None = None) -> None:
        self.token = secrets.token_hex(16)
        self._admit = admit
        self._timeout = HANDSHAKE_TIMEOUT if handshake_timeout is None else handshake_timeout
        self._listener = socket.create_server((listen_addr, 0))
        host, port = self._listener.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.getfqdn()
        self._address = f"{host}:{port}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-join",
                                        daemon=True)

    @property
    def address(self) -> str:
        """Where nodes from other machines connect (published in the rendezvous store)."""
        return self._address

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._listener.close()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._closed.is_set():
                if not selector.select(0.2):
                    continue
                try:
                    connection, _ = self._listener.accept()
                except OSError:
                    continue
                threading.Thread(target=self._handshake, args=(connection,),
                                 name="elastic_nb-handshake", daemon=True).start()

    def _handshake(self, connection: socket.socket) -> None:
        """Read one join request before the deadline; admit the node or refuse it."""
        try:
            request = read_request(connection, time.monotonic() + self._timeout)
        except (OSError, ProtocolError):
            connection.close()
            return
        channel = Channel(connection)
        try:
            index = self._check(request, channel)
        except JoinRefused as refused:
            try:
                channel.send(HandshakeKind.REJECTED, reason=str(refused))
            except OSError:
                pass
            channel.close()
            return
        try:
            channel.send(HandshakeKind.ACCEPTED, node=index)
        except OSError:
            channel.close()

    def _check(self, request: dict[str, Any], channel: Channel) -> int:
        if request.get("kind") != HandshakeKind.JOIN:
            raise JoinRefused("expected a join request")
        if not secrets.compare_digest(str(request.get("token", "")), self.token):
            raise JoinRefused("wrong join token (read it from the rendezvous store of this run)")
        nproc = request.get("nproc")
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise JoinRefused("nproc must be an int >= 1")
        if not isinstance(request.get("role", ""), str) or not request.get("role"):
            raise JoinRefused("role must be a non-empty string")
        connection = channel.socket
        connection.settimeout(None)
        return self._admit(request, channel)


def read_request(connection: socket.socket, deadline: float) -> dict[str, Any]:
    """The first line a peer sends, as a JSON object; ProtocolError or OSError otherwise."""
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProtocolError("no join request before the deadline")
        connection.settimeout(remaining)
        chunk = connection.recv(4096)
        if not chunk:
            raise ProtocolError("the peer closed before it asked to join")
        data += chunk
        if len(data) > MAX_HANDSHAKE_BYTES:
            raise ProtocolError(f"a join request longer than {MAX_HANDSHAKE_BYTES} bytes")
    try:
        request = json.loads(data.split(b"\n", 1)[0])
    except ValueError as exc:
        raise ProtocolError(f"not a JSON join request: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("a join request must be a JSON object")
    return request
