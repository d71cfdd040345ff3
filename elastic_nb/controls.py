"""Process controls: signals, teardown of a node's process group, inspection.

The Job uses these to kill a rank with any signal, kill a whole node, stop a
job without leaving anything behind, and read a worker's CPU and memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

SignalLike = int | str | signal.Signals


def parse_signal(sig: SignalLike) -> signal.Signals:
    """``signal.SIGTERM``, ``15``, ``"SIGTERM"`` and ``"TERM"`` all name SIGTERM."""
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            return signal.Signals[name]
        except KeyError:
            raise ValueError(f"unknown signal {sig!r}; use e.g. 'SIGKILL', 'SIGTERM', 'SIGSEGV', 'SIGINT'") from None
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


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (the group outlives its leader)."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def stop_node(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM a node's agent (torch stops its workers), then SIGKILL whatever is left."""
    pgid = proc.pid  # the agent leads its own session and process group
    if proc.poll() is None:
        send_signal(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    kill_group(pgid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while group_members(pgid) and time.monotonic() < deadline:
        kill_group(pgid, signal.SIGKILL)
        time.sleep(0.05)


def kill_node(proc: subprocess.Popen) -> None:
    """A machine lost: SIGKILL the agent and every worker at once."""
    kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


def process_stats(pid: int) -> tuple[float, int] | None:
    """CPU percent since the previous call for this pid, and RSS bytes; None if gone."""
    try:
        proc = _stat_handles.get(pid)
        if proc is None:
            proc = _stat_handles[pid] = psutil.Process(pid)
        with proc.oneshot():
            return proc.cpu_percent(None), proc.memory_info().rss
    except psutil.Error:
        _stat_handles.pop(pid, None)
        return None


_stat_handles: dict[int, psutil.Process] = {}
