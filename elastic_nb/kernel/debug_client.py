"""The notebook's end of a rank's debugger: one pdb session over the rank's socket.

``DebugSession`` talks to the Unix socket a paused rank serves
(``rank_debugger``): directly for a rank of this machine (``connect``), or
through a relay for a rank of a joined node (``debug_relay``: the session
gets one end of a socketpair, the same bytes either way). It sends one pdb
command at a time and returns what pdb printed up to its next prompt.
``Job.debug(rank)`` drives one from a cell
or a terminal, each command read with ``input()`` (a Jupyter kernel asks the
frontend); the dashboard's debug tab sends commands from a text box, off the
kernel's thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from elastic_nb.wire.rank_files import PROMPT

_ENDING_COMMANDS = {"c", "cont", "continue", "q", "quit", "exit"}


class DebuggerBusy(RuntimeError):
    """The rank's debugger already has a client (another cell, the dashboard)."""


class DebugSession:
    """One client of a paused rank's pdb.

    Built on a connected socket (a relay's end), or by ``connect`` to a
    local rank's. ``output`` is what pdb printed on connecting (where the
    rank stopped); ``send(command)`` returns the command's output; ``ended``
    turns true when the rank went on (``c``), was quit (``q``), or ended
    (stopped, restarted, killed): ``end_message`` says which.
    """

    def __init__(self, rank: int, sock: socket.socket, reason: str = "breakpoint") -> None:
        """A session on ``sock``, already connected to the rank's debugger (or to a relay)."""
        self.rank = rank
        self.reason = reason
        self._lock = threading.Lock()
        self._buffer = b""
        self._last_command = ""
        self.ended = False
        self._sock = sock
        self.output = self._read()
        if self.ended:  # refused (a second client), or the rank went as we came
            sock.close()
            raise DebuggerBusy(self.output.strip() or f"rank {rank}'s debugger closed at once")

    @classmethod
    def connect(cls, rank: int, path: str, reason: str = "breakpoint",
                timeout: float = 10) -> DebugSession:
        """A session on the debugger socket at ``path``, on this machine."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise ConnectionError(f"rank {rank}'s debugger at {path} did not answer ({exc}); "
                                  "it may have just resumed or ended") from None
        sock.settimeout(None)
        return cls(rank, sock, reason)

    def send(self, command: str) -> str:
        """Send one pdb command; its output (blocking until pdb prompts again or the rank goes)."""
        with self._lock:
            if self.ended:
                raise RuntimeError(f"the debug session of rank {self.rank} has ended")
            self._last_command = command.strip().split(" ", 1)[0]
            try:
                self._sock.sendall((command.rstrip("\n") + "\n").encode())
            except OSError:
                self.ended = True
                return ""
            return self._read()

    @property
    def end_message(self) -> str:
        if self._last_command in ("q", "quit", "exit"):
            return f"rank {self.rank} was quit from the debugger: it fails as any rank does"
        if self._last_command in _ENDING_COMMANDS and self.reason == "post_mortem":
            return f"rank {self.rank} leaves the debugger and fails with its error"
        if self._last_command in _ENDING_COMMANDS:
            return f"rank {self.rank} continues"
        return (f"rank {self.rank}'s debugger closed: the rank ended (stopped, restarted or "
                "killed) while the session was open")

    def close(self) -> None:
        """Leave the session (the rank resumes, as on ``c``)."""
        self.ended = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _read(self) -> str:
        """Until pdb's prompt ends the output, or the stream ends."""
        while not self._buffer.endswith(PROMPT.encode()):
            try:
                chunk = self._sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.ended = True
                break
            self._buffer += chunk
        text, self._buffer = self._buffer.decode("utf-8", errors="replace"), b""
        return text[: -len(PROMPT)] if text.endswith(PROMPT) else text


def drive(session: DebugSession, read: Callable[[str], str], write: Callable[[str], Any]) -> None:
    """Run pdb commands read with ``read`` until the rank goes on or ends; answers to ``write``.

    An empty line is ``c``; end of input leaves the session (the rank resumes).
    """
    try:
        write(session.output.rstrip("\n"))
        while not session.ended:
            try:
                command = read(PROMPT)
            except EOFError:
                break
            output = session.send(command or "c")
            if output.strip():
                write(output.rstrip("\n"))
    finally:
        session.close()
    write(f"[elastic_nb] {session.end_message}")
