"""Asking the ranks where they are, and noticing when nothing progresses.

``ask`` signals every running rank's answering thread (``worker.hang_answer``:
the rank's private files, no new port) and reads each ``hang.json``; a rank
whose process is stopped cannot answer and is said to be stopped, one that
is gone, gone; one on a node this machine cannot reach says so. The answers
become a ``model.hangs.HangReport``.

``HangWatch`` is one job's watch: while it runs, when no rank printed a line
for ``hang_after`` seconds it asks the ranks; if no collective completed
either since it last looked, the job has stalled: ``on_stall(report)`` is
called once per stall (the Job records a ``stalled`` event), and
``on_stall(None)`` once progress resumes (or a new attempt began).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from elastic_nb.kernel.supervisor import send_signal
from elastic_nb.model.hangs import HangReport, RankAnswer, analyze
from elastic_nb.wire.rank_files import HANG_FILE, HANG_SIGNAL


@dataclass(frozen=True)
class HangTarget:
    """A running rank on this machine whose answer is wanted."""

    rank: int
    pid: int
    rank_dir: str


def ask(targets: dict[int, HangTarget | str], timeout: float, attempt: int = 0) -> HangReport:
    """Every target's answer (``str``: why a rank cannot be asked from here), analyzed."""
    answers: list[RankAnswer] = []
    waiting: dict[int, tuple[HangTarget, str, float]] = {}
    for rank, target in targets.items():
        if isinstance(target, str):
            answers.append(RankAnswer(rank, "remote", note=target))
            continue
        status = _status(target.pid)
        if status is None:
            answers.append(RankAnswer(rank, "gone", note=f"pid {target.pid} exited"))
        elif status == psutil.STATUS_STOPPED:
            answers.append(RankAnswer(rank, "stopped", note=f"pid {target.pid}, SIGSTOP"))
        else:
            path = os.path.join(target.rank_dir, HANG_FILE)
            waiting[rank] = (target, path, _mtime(path))
            send_signal(target.pid, HANG_SIGNAL)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for rank, (_, path, before) in list(waiting.items()):
            if _mtime(path) != before:
                try:
                    with open(path) as source:
                        answer = json.load(source)
                except (OSError, ValueError):
                    continue  # being replaced: read it next time round
                answers.append(RankAnswer(rank, "answered", answer))
                del waiting[rank]
        time.sleep(0.02)
    for rank, (target, _, _) in waiting.items():
        answers.append(RankAnswer(rank, "silent", note=f"pid {target.pid} did not answer within "
                                                      f"{timeout:g} s"))
    return analyze(sorted(answers, key=lambda a: a.rank), time.time(), attempt)


def _status(pid: int) -> str | None:
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return None
    return None if status == psutil.STATUS_ZOMBIE else status


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


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
