"""Agent processes on this machine: start, environment, signals, stop and kill, stats.

Each local node host runs ``elastic_nb.node.host.main(FD)`` in its own session
and process group, with one end of a socketpair as FD. The supervisor starts
it with the kernel's environment (``sys.path``, ``env=``, job markers; each
job sends its own again), kills its whole group at once (a node lost, or a
host no longer wanted: nothing is left behind), and samples CPU and RSS of
workers that run on this machine (never a pid reported by another machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from elastic_nb.wire.config import FORKSERVER_PRELOAD

SignalLike = int | str | signal.Signals


def parse_signal(sig: SignalLike) -> signal.Signals:
    """``signal.SIGTERM``, ``15``, ``"SIGTERM"`` and ``"TERM"`` all name SIGTERM."""
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            return signal.Signals[name]
        except KeyError:
            raise ValueError(f"unknown signal {sig!r}; use e.g. 'SIGKILL', 'SIGTERM', "
                             "'SIGSEGV', 'SIGINT'") from None
    try:
        return signal.Signals(sig)
    except ValueError:
        raise ValueError(f"unknown signal number {sig!r}") from None


def send_signal(pid: int, sig: SignalLike) -> bool:
    """Signal one process; False when it is already gone."""
    try:
        os.kill(pid, parse_signal(sig))
    except ProcessLookupError:
        return False
    return True


def signal_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal a whole process group; nothing if it is gone (or no longer ours to signal)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (the group outlives its leader)."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def agent_environment(run_id: str, world_size: int, extra: dict[str, str]) -> dict[str, str]:
    """The kernel's environment as an agent (and its workers) should see it."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["ELASTIC_NB_RUN_ID"] = run_id  # marks every process of this job
    env["ELASTIC_NB_KERNEL_PID"] = str(os.getpid())  # ... and the kernel that launched it
    if world_size > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = "1"  # as torchrun: no oversubscription by default
    env.update(extra)
    return env


# A host's first lines, before anything imports torch: a host whose workers fork from a
# forkserver starts that forkserver first, so its import of torch runs beside the host's own.
_HOST_BOOT = (
    "import sys\n"
    "if sys.argv[2] == 'forkserver':\n"
    "    import multiprocessing, multiprocessing.forkserver\n"
    f"    multiprocessing.set_forkserver_preload({list(FORKSERVER_PRELOAD)!r})\n"
    "    multiprocessing.forkserver.ensure_running()\n"
    "from elastic_nb.node.host import main\n"
    "sys.exit(main(sys.argv[1:2]))\n"
)


@dataclass
class AgentProcess:
    """A local node's agent: its process and the Job's end of its channel."""

    process: subprocess.Popen
    socket: socket.socket

    @classmethod
    def start(cls, node_dir: str, env: dict[str, str], start_method: str) -> AgentProcess:
        ours, theirs = socket.socketpair()
        os.makedirs(node_dir, exist_ok=True)
        try:
            with open(os.path.join(node_dir, "agent.log"), "ab") as agent_log:
                process = subprocess.Popen(
                    [sys.executable, "-c", _HOST_BOOT, str(theirs.fileno()), start_method],
                    pass_fds=[theirs.fileno()], start_new_session=True,
                    stdin=subprocess.DEVNULL, stdout=agent_log, stderr=subprocess.STDOUT,
                    env=env, cwd=os.getcwd())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(process, ours)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def returncode(self) -> int | None:
        """Its exit code once it has exited (reaped), waiting for it if it is exiting."""
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL the host and its whole group (forkserver, workers) at once; return when
        none of them is left."""
        pgid = self.process.pid  # the host leads its own session and process group
        signal_group(pgid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 5
        while _group_members(pgid) and time.monotonic() < deadline:
            signal_group(pgid, signal.SIGKILL)
            time.sleep(0.02)


class StatsSampler:
    """CPU percent (since the previous sample of that pid) and RSS of local processes.

    ``sample`` reads them afresh; ``recent`` returns the last figures when
    they are younger than ``interval`` and cover every pid asked for (views
    ask several times a second; psutil's figures need not be fresher).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self._handles: dict[int, psutil.Process] = {}
        self._interval = interval
        self._lock = threading.Lock()
        self._last: tuple[float, dict[int, tuple[float, int]]] = (-interval, {})

    def recent(self, pids: Iterable[int]) -> dict[int, tuple[float, int]]:
        wanted = set(pids)
        with self._lock:
            taken, stats = self._last
            if time.monotonic() - taken >= self._interval or wanted - set(stats):
                stats = self.sample(wanted)
                self._last = (time.monotonic(), stats)
            return stats

    def sample(self, pids: Iterable[int]) -> dict[int, tuple[float, int]]:
        """Figures by pid, for those still alive; forgets pids not asked for."""
        wanted = set(pids)
        for pid in set(self._handles) - wanted:
            del self._handles[pid]
        found = {}
        for pid in wanted:
            try:
                proc = self._handles.get(pid)
                if proc is None:
                    proc = self._handles[pid] = psutil.Process(pid)
                with proc.oneshot():
                    found[pid] = (proc.cpu_percent(None), proc.memory_info().rss)
            except psutil.Error:
                self._handles.pop(pid, None)
        return found
