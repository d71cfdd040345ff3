"""The dashboard's log pane: recent lines of each rank, kept as they arrive, rendered on demand."""

from __future__ import annotations

import collections
import html
import itertools
import threading
from typing import TYPE_CHECKING

from elastic_nb.model import terminal
from elastic_nb.model.collapse import CollapsedLine
from elastic_nb.model.collapse import collapse as collapse_lines
from elastic_nb.wire.logfiles import LogLine

if TYPE_CHECKING:
    from elastic_nb.ui.dashboard.handle import JobHandle

MAX_LOG_LINES = 200
KEEP_LINES_PER_RANK = 2000


class LogView:
    """Recent lines of each rank, kept from the LogBook as they arrive, bounded per rank.

    Renders the last ``max_lines`` lines of one rank or of all ranks merged,
    filtered by text and attempt, with the job's prefix template applied and a
    separator wherever a new attempt begins.
    """

    def __init__(self, job: JobHandle, keep_per_rank: int = KEEP_LINES_PER_RANK) -> None:
        self._job = job
        self._keep = keep_per_rank
        self._lock = threading.Lock()
        self._by_rank: dict[int, collections.deque[LogLine]] = {}
        self._last_seq: dict[int, int] = {}
        self._overflow: collections.Counter[int] = collections.Counter()
        self.version = 0
        with self._lock:  # lines arriving meanwhile wait, then skip what the snapshot holds
            job.log_book.add_listener(self._on_lines)
            self._add(job.log_book.lines())

    def close(self) -> None:
        self._job.log_book.remove_listener(self._on_lines)

    def _on_lines(self, lines: list[LogLine]) -> None:
        with self._lock:
            self._add(lines)

    def _add(self, lines: list[LogLine]) -> None:
        for line in lines:
            if line.seq <= self._last_seq.get(line.rank, -1):
                continue
            buffer = self._by_rank.get(line.rank)
            if buffer is None:
                buffer = self._by_rank[line.rank] = collections.deque(maxlen=self._keep)
            if len(buffer) == self._keep:
                self._overflow[line.rank] += 1
            buffer.append(line)
            self._last_seq[line.rank] = line.seq
        if lines:
            self.version += 1

    def ranks(self) -> list[int]:
        with self._lock:
            return sorted(self._by_rank)

    def attempts(self) -> list[int]:
        with self._lock:
            return sorted({line.attempt for buf in self._by_rank.values() for line in buf})

    def select(self, rank: int | None = None, text: str = "", attempt: int | None = None,
               max_lines: int = MAX_LOG_LINES) -> tuple[list[LogLine], int]:
        """The last ``max_lines`` matching lines, and how many older matches are not shown."""
        with self._lock:
            buffers = [self._by_rank.get(rank, ())] if rank is not None else list(self._by_rank.values())
            picked: list[LogLine] = []
            total = 0
            for buffer in buffers:
                if attempt is None and not text:  # the common case: only the tail is needed
                    total += len(buffer)
                    picked.extend(itertools.islice(buffer, max(0, len(buffer) - max_lines), None))
                    continue
                matches = [line for line in buffer
                           if (attempt is None or line.attempt == attempt)
                           and (not text or text in line.text)]
                total += len(matches)
                picked.extend(matches)
        if rank is None:
            picked.sort(key=lambda line: line.seq)
        shown = picked[max(0, len(picked) - max_lines):]
        return shown, total - len(shown)

    def render(self, rank: int | None = None, text: str = "", attempt: int | None = None,
               max_lines: int = MAX_LOG_LINES, collapse: bool = False, as_html: bool = False) -> str:
        """The view's text (plain, or ``as_html`` with colours); ``collapse`` shows a line
        several ranks printed once (merged view). An unfinished line a rank is redrawing (a
        progress bar) shows at the end as it looks now."""
        selected, hidden = self.select(rank, text, attempt, max_lines)
        lines: list[LogLine] | list[CollapsedLine] = (
            collapse_lines(selected) if collapse and rank is None else selected)
        template = self._job.log_line_prefix_template
        escape = html.escape if as_html else str
        out = []
        with self._lock:
            overflow = self._overflow[rank] if rank is not None else sum(self._overflow.values())
        if hidden or overflow:
            out.append(escape(f"… {hidden + overflow} earlier lines not shown; every line is on "
                              f"disk under {self._job.log_dir}"))
        previous = None
        for line in lines:
            first = line.first if isinstance(line, CollapsedLine) else line
            if first.attempt != previous:
                out.append(escape(f"──────── attempt {first.attempt} "
                                  f"(restart count {first.source.restart_count}) ────────"))
                previous = first.attempt
            out.append(line.render_html(template) if as_html else line.render(template))
        for source, bar in self._job.log_book.pending_lines(rank):
            if attempt in (None, source.attempt) and (not text or text in bar):
                shown = (escape(source.prefix(template)) + terminal.to_html(bar) if as_html
                         else source.prefix(template) + terminal.plain(bar))
                out.append(shown)
        return "\n".join(out)
