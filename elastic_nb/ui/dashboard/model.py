"""Everything the dashboard shows, computed from a Job's snapshots: no widgets involved.

``DashboardModel`` is plain Python, testable without a frontend: header,
tiles and timeline come from ``model.render`` over ``job.snapshot()``, the
log pane from a ``LogView``, stack dumps from ``job.stacks()``, and the
debug console's transcript from a ``DebugSession``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from elastic_nb.model import render
from elastic_nb.model.goodput import Goodput
from elastic_nb.model.hangs import HangReport, hang_map_html
from elastic_nb.model.snapshot import JobSnapshot
from elastic_nb.ui.dashboard.log_view import MAX_LOG_LINES, LogView
from elastic_nb.wire.rank_files import PROMPT

if TYPE_CHECKING:
    from elastic_nb.kernel.debug_client import DebugSession
    from elastic_nb.ui.dashboard.handle import JobHandle


GOODPUT_EVERY = 1.0  # seconds between two computations of the header's goodput


class DashboardModel:
    """Everything the dashboard shows, computed from the Job's snapshots; no widgets involved."""

    def __init__(self, job: JobHandle, hung_after: float = 10.0, hung_factor: float = 5.0,
                 max_log_lines: int = MAX_LOG_LINES, clock: Callable[[], float] = time.time) -> None:
        self.job = job
        self.hung_after = hung_after
        self.hung_factor = hung_factor
        self.max_log_lines = max_log_lines
        self.clock = clock
        self.logs = LogView(job)
        self.stacks: dict[int, str] = {}
        self.hang: HangReport | None = None
        self.status = ""
        self._debug: DebugSession | None = None
        self._debug_lock = threading.Lock()
        self.debug_transcript: list[str] = []
        self._goodput: Goodput | None = None
        self._goodput_at = float("-inf")

    def close(self) -> None:
        self.logs.close()
        self.close_debug()

    def open_debug(self, rank: int) -> str:
        """Connect the debug console to a paused rank (leaving any other session)."""
        self.close_debug()
        session = self.job.debug_session(rank)
        with self._debug_lock:
            self._debug = session
            self.debug_transcript = [f"──────── pdb in rank {rank} ────────", session.output]
        return f"debugging rank {rank}: type pdb commands in the debug tab"

    def debug_send(self, command: str) -> str:
        """Send one command to the console's rank; blocks until pdb answers (run it off the
        kernel's thread)."""
        with self._debug_lock:
            session = self._debug
            if session is None:
                raise ValueError("no debug session: press “debug” on a paused rank's tile")
            output = session.send(command)
            self.debug_transcript.append(f"{PROMPT}{command}\n{output}")
            if session.ended:
                self.debug_transcript.append(f"[elastic_nb] {session.end_message}")
                self._debug = None
                return session.end_message
        return f"rank {session.rank}: {command}"

    def close_debug(self) -> None:
        with self._debug_lock:
            if self._debug is not None:
                self._debug.close()
                self.debug_transcript.append(f"[elastic_nb] left the session: rank "
                                             f"{self._debug.rank} continues")
                self._debug = None

    def debug_text(self) -> str:
        with self._debug_lock:
            text = "".join(part if part.endswith("\n") else part + "\n"
                           for part in self.debug_transcript)
            return text + (PROMPT if self._debug is not None else "")

    def snapshot(self) -> JobSnapshot:
        return self.job.snapshot()

    def tiles(self, snap: JobSnapshot | None = None) -> list[render.Tile]:
        return render.tiles(snap or self.snapshot(), self.clock(), self.hung_after,
                            self.hung_factor)

    def timeline(self, snap: JobSnapshot | None = None) -> list[render.TimelineEntry]:
        bill = self.goodput()
        costs = {f.time: f"{f.cost:.1f} s" for f in bill.faults} if bill and bill.known else {}
        return render.timeline(snap or self.snapshot(), costs)

    def goodput(self) -> Goodput | None:
        """The job's goodput, computed again at most every ``GOODPUT_EVERY`` seconds (its cost
        follows the steps reported, not the refresh rate)."""
        now = time.monotonic()
        if now - self._goodput_at >= GOODPUT_EVERY:
            self._goodput, self._goodput_at = self.job.goodput(), now
        return self._goodput

    def goodput_text(self) -> str:
        """``goodput 91%`` for the header, or "" while unknown."""
        bill = self.goodput()
        return bill.short() if bill is not None else ""

    def log_text(self, rank: int | None = None, text: str = "", attempt: int | None = None,
                 collapse: bool = False) -> str:
        return self.logs.render(rank, text, attempt, self.max_log_lines, collapse)

    def log_html(self, rank: int | None = None, text: str = "", attempt: int | None = None,
                 collapse: bool = False) -> str:
        """The log pane as HTML: the ranks' colours shown, no escape sequence raw."""
        return self.logs.render(rank, text, attempt, self.max_log_lines, collapse, as_html=True)

    def refresh_hang_map(self, timeout: float = 5) -> HangReport:
        """Ask the ranks where they are now (blocking: run it off the kernel's thread)."""
        self.hang = self.job.hang_report(timeout=timeout)
        return self.hang

    def hang_html(self) -> str:
        if self.hang is None:
            return ("<i>press “refresh” to see which rank is in which collective; a job that "
                    "stalls says so in the header</i>")
        return hang_map_html(self.hang)

    def dump_stacks(self, timeout: float = 5) -> dict[int, str]:
        self.stacks = self.job.stacks(timeout=timeout)
        return self.stacks

    def stacks_text(self) -> str:
        return "\n\n".join(f"════ rank {rank} ════\n{text.rstrip()}" for rank, text in self.stacks.items())
