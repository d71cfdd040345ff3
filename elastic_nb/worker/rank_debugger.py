"""A rank's debugger: pdb served on a private Unix socket beside the rank's logs.

The worker trampoline points ``breakpoint()`` (unless ``PYTHONBREAKPOINT``
says otherwise), ``pdb.set_trace()`` and ``torch.distributed.breakpoint()``
here. When the rank stops it writes ``paused.json`` beside its socket (its
agent reports that to the Job), says so on stderr, and waits for one client
(``debug_client.DebugSession``; a second is refused with a message). The
session speaks pdb's own text: ``c`` resumes (the notice goes), ``q`` makes
the rank fail (``DebuggerQuit``), a client that hangs up resumes the rank.

Post-mortem (``launch(post_mortem=True)``): a rank whose function raised
waits the same way at the failing frame, for ``post_mortem_timeout``
seconds at most, then fails with its original error as it would have.

The socket is mode 0600 in the rank's directory (or a private 0700
directory when that path is too long for a Unix socket).
"""

from __future__ import annotations

import linecache
import os
import pdb
import socket
import sys
import tempfile
import threading
from types import FrameType, TracebackType
from typing import Any

from elastic_nb.wire.rank_files import NOTICE_NAME, PROMPT, SOCKET_NAME, PauseNotice

BUSY = "elastic_nb: rank {rank} already has a debugger client; close that one first"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
cell_numbers: dict[str, int] = {}  # notebook cell files -> execution counts (the trampoline's)


class DebuggerQuit(RuntimeError):
    """The rank was quit from the debugger (``q``): it fails as any rank does."""


class _Connection:
    """The client, as pdb's stdin and stdout (text lines over the socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("r", encoding="utf-8", errors="replace", newline="\n")

    def readline(self) -> str:
        try:
            return self._reader.readline()
        except OSError:
            return ""

    def write(self, text: str) -> int:
        try:
            self._sock.sendall(text.encode("utf-8", errors="replace"))
        except OSError:
            pass  # the client went: pdb reads EOF next
        return len(text)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


class _Server:
    """The rank's socket and notice; accepts one client and refuses any other."""

    def __init__(self, rank_dir: str, rank: int) -> None:
        self.rank = rank
        self.notice_path = os.path.join(rank_dir, NOTICE_NAME)
        path = os.path.join(rank_dir, SOCKET_NAME)
        self._private_dir = None
        if len(path) > _MAX_SOCKET_PATH:
            self._private_dir = tempfile.mkdtemp(prefix="enb-debug-")  # mode 0700
            path = os.path.join(self._private_dir, SOCKET_NAME)
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        os.chmod(path, 0o600)  # before listen: nobody else can connect in between
        self._listener.listen(4)

    def publish(self, **where: Any) -> None:
        """Write the notice the node's agent reports (where the rank stopped, this socket)."""
        PauseNotice(rank=self.rank, socket=self.path, **where).write(self.notice_path)

    def accept(self, timeout: float | None) -> socket.socket | None:
        self._listener.settimeout(timeout)
        try:
            client, _ = self._listener.accept()
        except TimeoutError:
            return None
        client.settimeout(None)
        threading.Thread(target=self._refuse_others, name="elastic_nb-debug-refuse",
                         daemon=True).start()
        return client

    def _refuse_others(self) -> None:
        self._listener.settimeout(None)
        while True:
            try:
                other, _ = self._listener.accept()
            except OSError:
                return  # closed: the session is over
            other.sendall((BUSY.format(rank=self.rank) + "\n").encode())
            other.close()

    def close(self) -> None:
        for path in (self.notice_path, self.path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._private_dir is not None:
            os.rmdir(self._private_dir)


class RankPdb(pdb.Pdb):
    """pdb whose console is the client of this rank's socket, from stop to resume."""

    def __init__(self, reason: str, exception: str | None = None,
                 timeout: float | None = None) -> None:
        super().__init__(nosigint=True, readrc=False)
        self.prompt = PROMPT
        self.use_rawinput = False
        self._reason, self._exception, self._timeout = reason, exception, timeout
        self._server: _Server | None = None
        self._connection: _Connection | None = None

    def interaction(self, frame: FrameType | None, tb: TracebackType | None) -> None:
        if self._connection is None and not self._attach(frame, tb):
            return  # nobody came before the post-mortem timeout
        super().interaction(frame, tb)

    def _attach(self, frame: FrameType | None, tb: TracebackType | None) -> bool:
        where = frame
        if where is None and tb is not None:
            while tb.tb_next is not None:
                tb = tb.tb_next
            where = tb.tb_frame
        assert where is not None
        rank = int(os.environ.get("RANK", "-1"))
        rank_dir = os.path.dirname(os.environ.get("TORCHELASTIC_ERROR_FILE", "")) or os.getcwd()
        self._server = server = _Server(rank_dir, rank)
        filename, line = where.f_code.co_filename, where.f_lineno
        source = linecache.getline(filename, line).strip()
        server.publish(pid=os.getpid(), file=filename, line=line, function=where.f_code.co_name,
                       source=source, cell=cell_numbers.get(filename), reason=self._reason,
                       exception=self._exception)
        cause = f" after {self._exception}" if self._exception else ""
        print(f"elastic_nb: rank {rank} paused ({self._reason}{cause}) at {filename}:{line}: "
              f"{source}  -- job.debug({rank}) opens pdb here", file=sys.stderr, flush=True)
        client = server.accept(self._timeout)
        if client is None:
            print(f"elastic_nb: no debugger came to rank {rank} within {self._timeout:g} s "
                  "(post_mortem_timeout); the rank exits with its error", file=sys.stderr,
                  flush=True)
            self._detach()
            return False
        self._connection = _Connection(client)
        self.stdin = self.stdout = self._connection  # type: ignore[assignment]
        return True

    def _detach(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.stdin, self.stdout = sys.stdin, sys.stdout
        if self._server is not None:
            self._server.close()
            self._server = None

    def do_continue(self, arg: str) -> bool | None:
        result = super().do_continue(arg)
        self._detach()
        return result

    do_c = do_cont = do_continue

    def do_quit(self, arg: str) -> bool | None:
        result = super().do_quit(arg)
        self._detach()
        return result

    do_q = do_exit = do_quit

    def do_EOF(self, arg: str) -> bool | None:
        """The client hung up: the rank resumes (it would otherwise wait forever)."""
        return self.do_continue(arg)


def _stop(frame: FrameType | None) -> None:
    RankPdb("breakpoint").set_trace(frame)


def set_trace(*, header: str | None = None) -> None:
    """``pdb.set_trace``: stop this rank here and wait for a debugger."""
    if header is not None:
        print(header, file=sys.stderr, flush=True)
    _stop(sys._getframe().f_back)


def breakpointhook(*args: Any, **kwargs: Any) -> None:
    """``sys.breakpointhook``: ``breakpoint()`` in a rank stops it for ``job.debug``."""
    _stop(sys._getframe().f_back)


def distributed_breakpoint(rank: int = 0, skip: int = 0, timeout_s: float = 3600) -> None:
    """``torch.distributed.breakpoint``: stop rank ``rank`` before the barrier the others
    wait in (as torch's does, with this debugger instead of the rank's terminal); the
    session opens on the barrier line, ``up`` is the caller."""
    import torch.distributed as dist

    if dist.get_rank() == rank:
        _stop(sys._getframe())
    dist.barrier()


def post_mortem(error: BaseException, timeout: float) -> None:
    """Wait up to ``timeout`` s for a debugger at the frame that raised ``error``."""
    debugger = RankPdb("post_mortem", f"{type(error).__name__}: {error}".splitlines()[0],
                       timeout=timeout)
    debugger.reset()
    debugger.interaction(None, error.__traceback__)


def install() -> None:
    """Point this rank's ``breakpoint()``, ``pdb.set_trace`` and torch's breakpoint here."""
    if not os.environ.get("PYTHONBREAKPOINT"):  # set: Python's own hook honours it
        sys.breakpointhook = breakpointhook
    pdb.set_trace = set_trace
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None:
        distributed.breakpoint = distributed_breakpoint  # type: ignore[attr-defined]


def quit_error(rank: str) -> DebuggerQuit:
    return DebuggerQuit(f"rank {rank} was quit from the debugger (q)")

