"""A straggler on purpose: one worker run at a fraction of its speed by a stop/continue cycle.

``Stragglers.slow(pid, fraction)`` starts (or changes, or with 1.0 ends) a
thread that lets the process run ``fraction`` of each ``PERIOD`` and stops
it (SIGSTOP) for the rest. It ends, leaving the process running, when the
fraction goes back to 1, the process exits, or ``stop_all`` is called.
"""

from __future__ import annotations

import os
import signal
import threading

PERIOD = 0.1  # seconds of one stop/continue cycle


class Stragglers:
    """The duty cycles this host runs, by worker pid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cycles: dict[int, tuple[float, threading.Event]] = {}

    def slow(self, pid: int, fraction: float) -> None:
        with self._lock:
            old = self._cycles.pop(pid, None)
            if old is not None:
                old[1].set()
            if fraction >= 1:
                return
            stop = threading.Event()
            self._cycles[pid] = (fraction, stop)
        threading.Thread(target=self._cycle, args=(pid, fraction, stop), daemon=True,
                         name=f"elastic_nb-slow-{pid}").start()

    def stop_all(self) -> None:
        with self._lock:
            cycles, self._cycles = list(self._cycles.values()), {}
        for _, stop in cycles:
            stop.set()

    def _cycle(self, pid: int, fraction: float, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                os.kill(pid, signal.SIGCONT)
                if stop.wait(PERIOD * fraction):
                    break
                os.kill(pid, signal.SIGSTOP)
                stop.wait(PERIOD * (1 - fraction))
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        with self._lock:
            if self._cycles.get(pid, (None, None))[1] is stop:
                del self._cycles[pid]
