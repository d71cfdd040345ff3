"""A node that lost its job leaves within a bound, without the job's rendezvous store.

torch's agent, when it stops on a signal, closes the rendezvous through the
store; on a cut link or a silent store that waits out the store's read
timeout (60 s on c10d) or longer. A joined node that lost its Job (silence,
a closed channel, a fence) does not need the store to leave: ``leave_now``
stops everything the host started (its forkserver and workers, and what
they started) with SIGTERM, then SIGKILL after ``grace`` seconds, and ends
the host at once (``os._exit``), so the whole leave takes at most the
liveness timeout that noticed the loss, plus ``grace``, plus a moment.
"""

from __future__ import annotations

import os
import sys

import psutil


def end_descendants(grace: float) -> None:
    """SIGTERM every process under this one, SIGKILL those still there after ``grace``."""
    try:
        below = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for proc in below:
        try:
            proc.resume()  # a frozen worker acts on SIGTERM only once continued
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(below, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=1)


def leave_now(grace: float, exitcode: int) -> None:
    """End what this host started, then the host itself, now (never returns)."""
    end_descendants(grace)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exitcode)
