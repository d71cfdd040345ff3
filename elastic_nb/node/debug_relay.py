"""A joined node's end of the Job's pdb sessions: each one relayed to a paused rank's socket.

A paused rank serves pdb on a Unix socket on this machine (``worker.rank_debugger``).
When the Job sends ``DebugOpen`` the host connects to it, on a thread of
the session's own (the command thread never waits on a rank), and sends what
pdb writes as ``DebugOutput`` reports; ``DebugInput`` goes to the socket,
``DebugClose`` shuts it (the rank resumes, as when a local client hangs up).
When the socket ends (the rank went on, ended, or refused a second client
after saying so) the host sends ``DebugEnded``; one that cannot be reached
ends at once with the reason. So the Job debugs the rank through the node's
channel and no port opens on this machine.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from elastic_nb.wire.commands import DebugClose, DebugInput, DebugOpen
from elastic_nb.wire.rank_files import SOCKET_NAME
from elastic_nb.wire.records import Message
from elastic_nb.wire.reports import DebugEnded, DebugOutput

CONNECT_TIMEOUT = 10.0


class _Session:
    """One relayed session: its socket once connected, and what came before it was."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.pending = b""  # input that came while it was connecting
        self.closed = False


class DebugRelays:
    """The sessions the Job relays through this host: ``open``, ``input``, ``close``."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._sessions: dict[int, _Session] = {}

    def open(self, command: DebugOpen) -> None:
        with self._lock:
            if command.session in self._sessions:
                return  # opened already
            self._sessions[command.session] = session = _Session()
        threading.Thread(target=self._relay, args=(command, session), daemon=True,
                         name=f"elastic_nb-debug-{command.session}").start()

    def input(self, command: DebugInput) -> None:
        session = self._find(command.session)
        if session is None:
            return  # over: the Job reads its end
        with session.lock:
            if session.sock is None:
                session.pending += command.data
                return
            try:
                session.sock.sendall(command.data)
            except OSError:
                pass  # the rank went: its end is on its way

    def close(self, command: DebugClose) -> None:
        session = self._find(command.session)
        if session is None:
            return
        with session.lock:
            session.closed = True
            if session.sock is not None:
                _shut(session.sock)  # pdb reads the end and resumes; the relay reads it too

    def _find(self, number: int) -> _Session | None:
        with self._lock:
            return self._sessions.get(number)

    def _relay(self, command: DebugOpen, session: _Session) -> None:
        error = None
        try:
            sock = self._connect(command)
        except OSError as exc:
            error = (f"rank {command.rank}'s debugger at {command.socket} did not answer ({exc}); "
                     "it may have just resumed or ended")
        else:
            self._forward(command.session, sock, session)
        with self._lock:
            del self._sessions[command.session]
        self._send(DebugEnded(session=command.session, error=error))

    def _connect(self, command: DebugOpen) -> socket.socket:
        if os.path.basename(command.socket) != SOCKET_NAME:  # a rank's debugger, nothing else
            raise OSError(f"not a rank debugger's socket: {command.socket}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(command.socket)
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def _forward(self, number: int, sock: socket.socket, session: _Session) -> None:
        """What pdb writes, as reports, until its socket ends."""
        with session.lock:
            session.sock = sock
            try:
                if session.closed:
                    _shut(sock)
                elif session.pending:
                    sock.sendall(session.pending)
            except OSError:
                pass
            session.pending = b""
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            self._send(DebugOutput(session=number, data=data))
        with session.lock:
            session.sock = None
            session.closed = True
        sock.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
