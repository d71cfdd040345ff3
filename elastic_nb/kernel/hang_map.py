"""Asking the ranks where they are, and noticing when nothing progresses.

``report`` asks every node with running ranks at once through its handle
(``NodeHandle.ask_hang``): a local node's ranks are asked here, a joined
node's by its host, through its channel. Either way ``wire.rank_probe``
signals each rank's answering thread (``worker.hang_answer``: the rank's
private files, no new port) and reads its ``hang.json``; a rank whose
process is stopped cannot answer and is said to be stopped, one that is
gone, gone; a node that does not answer in time, or whose channel closes
first, leaves its ranks silent. The answers of all nodes are analyzed once,
into a ``model.hangs.HangReport``.

``HangWatch`` is one job's watch: while it runs, when no rank printed a line
for ``hang_after`` seconds it asks the ranks; if no collective completed
either since it last looked, the job has stalled: ``on_stall(report)`` is
called once per stall (the Job records a ``stalled`` event), and
``on_stall(None)`` once progress resumes (or a new attempt began).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from elastic_nb.kernel.asking import ask_nodes, gather
from elastic_nb.kernel.core import JobCore
from elastic_nb.model.hangs import HangReport, analyze


def report(core: JobCore, timeout: float) -> HangReport:
    """Every running rank's answer (or why there is none), analyzed."""
    with core.lock:
        workers = core.state.workers.values()
        attempt = max((w.attempt for w in workers), default=0)
        asked = ask_nodes(workers, lambda node, targets: core.nodes[node].ask_hang(targets, timeout))
    answers = gather(asked, timeout)
    return analyze(list(answers.values()), time.time(), attempt)


class HangWatch:
    """Notices a job that makes no progress (see the module's docstring)."""

    def __init__(self, hang_after: float, running: Callable[[], bool],
                 last_line: Callable[[], float], report: Callable[[], HangReport],
                 on_stall: Callable[[HangReport | None], None], name: str) -> None:
        self._after = hang_after
        self._running, self._last_line, self._report = running, last_line, report
        self._on_stall = on_stall
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{name}-hang-watch", daemon=True)

    def start(self) -> None:
        if self._after > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        progress: tuple | None = None
        since = time.monotonic()
        stalled = False
        while not self._stop.wait(max(1.0, self._after / 4)):
            if not self._running():
                progress, since, stalled = None, time.monotonic(), False
                continue
            if time.time() - self._last_line() < self._after:
                since = time.monotonic()
                stalled = self._resumed(stalled)
                continue
            report = self._report()
            now_progress = _progress(report)
            if now_progress != progress:
                progress, since = now_progress, time.monotonic()
                stalled = self._resumed(stalled)
            elif not stalled and time.monotonic() - since >= self._after:
                stalled = True
                self._on_stall(report)


    def _resumed(self, stalled: bool) -> bool:
        """Progress again: a stall said before is over (``on_stall(None)``)."""
        if stalled:
            self._on_stall(None)
        return False


def _progress(report: HangReport) -> tuple:
    """What moves while a job makes progress: the collectives each rank completed, its attempt."""
    return report.attempt, tuple(sorted((r, tuple(sorted(p.completed.items())))
                                        for r, p in report.ranks.items()))
