"""The kernel's end of a pdb session relayed through a joined node's channel.

A paused rank on another machine serves pdb on a Unix socket there
(``worker.rank_debugger``); its node host connects to it when the Job sends
``DebugOpen`` and relays both ways (``node.debug_relay``), so no port opens
on that machine. Here, ``DebugRelay`` holds a socketpair: ``client`` is the
end an ordinary ``DebugSession`` reads and writes, as if it were the rank's
socket; the other end is the relay's. The pump hands it the node's
``DebugOutput`` and ``DebugEnded`` reports (``output``, ``ended``), which a
writer thread puts into the pair, so the pump never waits on a session; a
reader thread sends what the session writes as ``DebugInput`` commands, and
``DebugClose`` once the session has gone. The rank's own answers (pdb's
text, its refusal of a second client, its end) reach the session unchanged.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable

from elastic_nb.kernel.debug_client import DebuggerBusy, DebugSession
from elastic_nb.wire.commands import Command, DebugClose, DebugInput


class DebugRelay:
    """One relayed session (see the module's docstring): ``session`` opens the client's
    ``DebugSession``; the pump calls ``output`` and ``ended``; ``error`` says why it never
    opened, if it did not."""

    def __init__(self, number: int, send: Callable[[Command], bool]) -> None:
        self.number = number
        self.error: str | None = None  # the node could not open the session: why
        self._send = send
        self.client, self._end = socket.socketpair()
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._ended = False
        self._lock = threading.Lock()
        self._running = 2  # the reader and the writer: the last to stop closes the relay's end
        for target, role in ((self._read_inputs, "in"), (self._write_outputs, "out")):
            threading.Thread(target=target, name=f"elastic_nb-debug-{role}-{number}",
                             daemon=True).start()

    def session(self, rank: int, reason: str) -> DebugSession:
        """The session on ``client``: as a local one, ConnectionError if the node could not
        reach the rank's debugger, ``DebuggerBusy`` if the debugger refused this client."""
        try:
            return DebugSession(rank, self.client, reason)
        except DebuggerBusy:
            if self.error is not None:
                raise ConnectionError(self.error) from None
            raise

    def output(self, data: bytes) -> None:
        """What the rank's debugger printed (from the pump: queued, never waited on)."""
        self._out.put(data)

    def ended(self, error: str | None) -> None:
        """The session is over on the node's side (``error``: it never opened)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self.error = error  # before the end is written: the session reads it after
        self._out.put(None)

    def _write_outputs(self) -> None:
        while (data := self._out.get()) is not None:
            try:
                self._end.sendall(data)
            except OSError:
                pass  # the session has gone: what is left is dropped
        try:
            self._end.shutdown(socket.SHUT_RDWR)  # the session reads its end; the reader stops
        except OSError:
            pass
        self._stopped()

    def _read_inputs(self) -> None:
        while True:
            try:
                data = self._end.recv(1 << 16)
            except OSError:
                data = b""
            if not data or not self._send(DebugInput(session=self.number, data=data)):
                break
        with self._lock:
            left = not self._ended
        if left:  # the session closed first: the rank resumes, and its end comes back
            self._send(DebugClose(session=self.number))
        self._stopped()

    def _stopped(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self._end.close()
