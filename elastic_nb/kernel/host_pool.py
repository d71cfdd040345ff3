"""Warm node hosts: this kernel's agent processes kept between jobs, and their lifecycle.

A node host (``node.host.NodeHost``) is an agent process that runs one job's
node after another, keeping torch imported and its forkserver warm. A
finished job gives each healthy local host back (``release``); the next
launch on this machine takes idle hosts first (``acquire``) and starts new
ones only for the nodes left. An idle host exits after its keep-warm time
(``set_keep_warm`` for the default, ``launch(keep_warm=...)`` per job; 0 ends
it as soon as its job is done). ``shutdown`` ends every idle host now.

Hosts die with the kernel: each kills its own process group when its
channel closes. ``kill_node`` kills a host outright; a lost host is never
reused.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from elastic_nb.kernel.supervisor import AgentProcess
from elastic_nb.model.strenum import StrEnum

DEFAULT_KEEP_WARM = 300.0


class HostState(StrEnum):
    """A host is BUSY from ``acquire`` or ``register`` until ``release`` makes it IDLE."""

    IDLE = "idle"
    BUSY = "busy"


@dataclass(frozen=True)
class HostInfo:
    """One host as ``elastic_nb.hosts()`` shows it."""

    pid: int
    state: str  # idle or busy
    run_id: str  # the job it runs (busy) or ran last (idle)
    jobs: int  # jobs it has served, this one included
    expires_in: float | None  # seconds until an idle host exits

    def __str__(self) -> str:
        what = "runs" if self.state == HostState.BUSY else "ran"
        text = f"host pid {self.pid}: {self.state}, {what} {self.run_id} ({self.jobs} jobs)"
        if self.expires_in is not None:
            text += f", exits in {self.expires_in:.0f} s"
        return text


@dataclass
class _Host:
    agent: AgentProcess
    executable: str
    run_id: str
    jobs: int = 1
    expires_at: float | None = None  # set while idle


class HostPool:
    """The hosts of this kernel, busy and idle; thread-safe.

    ``acquire`` / ``register`` / ``release`` / ``discard`` follow one host
    through a job; ``hosts`` lists them; ``shutdown`` ends the idle ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._hosts: dict[int, _Host] = {}  # by pid
        self._keep_warm = DEFAULT_KEEP_WARM
        self._reaper: threading.Thread | None = None

    @property
    def keep_warm(self) -> float:
        return self._keep_warm

    def set_keep_warm(self, seconds: float) -> None:
        _check_keep_warm(seconds)
        with self._lock:
            self._keep_warm = float(seconds)

    def acquire(self, run_id: str, above_pid: int = 0) -> AgentProcess | None:
        """The idle host of this Python with the lowest pid above ``above_pid``, now busy for
        job ``run_id``; None if there is none.

        torch's rendezvous ranks the nodes of one machine by their agents'
        pids; taking hosts in pid order, and new hosts (higher pids) after
        them, keeps node 0's ranks first as in a cold launch.
        """
        with self._lock:
            for host in sorted(self._hosts.values(), key=lambda h: h.agent.pid):
                if (host.expires_at is None or host.executable != sys.executable
                        or host.agent.pid <= above_pid):
                    continue
                if not host.agent.alive():
                    self._forget(host)
                    continue
                host.expires_at, host.run_id, host.jobs = None, run_id, host.jobs + 1
                return host.agent
        return None

    def register(self, agent: AgentProcess, run_id: str) -> None:
        """A host just started for job ``run_id``."""
        with self._lock:
            self._hosts[agent.pid] = _Host(agent, sys.executable, run_id)

    def release(self, agent: AgentProcess, keep_warm: float) -> None:
        """Its job is done with the host: keep it idle for ``keep_warm`` seconds, or end it."""
        if keep_warm <= 0 or not agent.alive():
            self.discard(agent)
            return
        with self._lock:
            host = self._hosts.get(agent.pid)
            if host is None:
                return
            host.expires_at = time.monotonic() + keep_warm
            self._start_reaper()
            self._lock.notify_all()

    def discard(self, agent: AgentProcess) -> None:
        """End a host and forget it (killed, lost, or not to be kept)."""
        with self._lock:
            self._hosts.pop(agent.pid, None)
        agent.kill()

    def shutdown(self) -> int:
        """End every idle host now; how many there were (busy hosts end with their jobs)."""
        with self._lock:
            idle = [h for h in self._hosts.values() if h.expires_at is not None]
            for host in idle:
                self._forget(host)
        for host in idle:
            host.agent.kill()
        return len(idle)

    def hosts(self) -> list[HostInfo]:
        now = time.monotonic()
        with self._lock:
            return [HostInfo(pid, HostState.BUSY if h.expires_at is None else HostState.IDLE,
                             h.run_id, h.jobs,
                             None if h.expires_at is None else max(0.0, h.expires_at - now))
                    for pid, h in sorted(self._hosts.items())]

    def idle_count(self) -> int:
        with self._lock:
            return sum(1 for h in self._hosts.values() if h.expires_at is not None)

    def _forget(self, host: _Host) -> None:
        self._hosts.pop(host.agent.pid, None)

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="elastic_nb-hosts",
                                            daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """End idle hosts as their keep-warm time runs out; returns when none is idle."""
        while True:
            with self._lock:
                deadlines = [h.expires_at for h in self._hosts.values() if h.expires_at is not None]
                if not deadlines:
                    self._reaper = None
                    return
                now = time.monotonic()
                expired = [h for h in self._hosts.values()
                           if h.expires_at is not None and h.expires_at <= now]
                for host in expired:
                    self._forget(host)
                if not expired:
                    self._lock.wait(min(deadlines) - now)
                    continue
            for host in expired:
                host.agent.kill()


def _check_keep_warm(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(f"keep_warm must be a number of seconds >= 0 (0: no warm hosts), "
                         f"not {seconds!r}")


POOL = HostPool()
"""This kernel's hosts."""


def set_keep_warm(seconds: float) -> None:
    """How long idle hosts stay warm after a job, for launches that do not say (default 300 s)."""
    POOL.set_keep_warm(seconds)


def hosts() -> list[HostInfo]:
    """This kernel's node hosts, busy and idle."""
    return POOL.hosts()


def shutdown() -> int:
    """End every idle host now (running jobs keep theirs); how many ended."""
    return POOL.shutdown()
