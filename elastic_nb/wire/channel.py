"""The stream between a node host and the Job: one JSON object per line.

A local node's channel is a socketpair; a node that joined from another
machine talks over TCP. Each message is a record of ``reports``,
``commands`` or ``join`` (``records.Message``), at most ``MAX_FRAME_BYTES``
long. The channel frames and unframes; the receiving end parses the objects
with the table of the direction it reads (``parse_report``,
``parse_command``), so an unknown kind is refused at the edge.

A joined node's channel is sealed once its handshake is done (``seal_frames``
with a ``wire.auth.FrameSeal``): every frame then carries a MAC over its
sequence number, and one that fails its check raises ``ProtocolError``, on
which the reader closes the channel.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from elastic_nb.wire import auth
from elastic_nb.wire.records import Message, ProtocolError

MAX_FRAME_BYTES = 256 << 20  # one message; results and payloads are pickles, so be generous


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
        self._seal: auth.FrameSeal | None = None

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def seal_frames(self, seal: auth.FrameSeal) -> None:
        """From now on every frame sent and received is sealed with the session's key."""
        self._seal = seal

    def send(self, record: Message, key: str | None = None) -> None:
        """Send one record; with the job's ``key``, signed as a handshake message (not framed
        by the session, which starts after it); otherwise sealed if the channel is."""
        message = record.to_message() if key is None else auth.seal(key, record.to_message())
        data = json.dumps(message, separators=(",", ":")).encode()
        with self._send_lock:
            if self._seal is not None and key is None:
                data = self._seal.seal(data)
            self._sock.sendall(data + b"\n")

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
        if self._seal is not None:
            line = self._seal.open(line)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"not a JSON message: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
        return message

    def shutdown(self) -> None:
        """End the stream both ways (the peer reads its end); the socket stays to be closed."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()
