"""The dashboard's log pane: recent lines of each rank, kept as they arrive, rendered on demand."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from elastic_nb.model import terminal
from elastic_nb.model.collapse import CollapsedLine
from elastic_nb.model.collapse import collapse as collapse_lines
from elastic_nb.wire.logfiles import LogLine

if TYPE_CHECKING:
    from elastic_nb.ui.dashboard.handle import JobHandle

MAX_LOG_LINES = 200


class LogView:
    """The log pane over the job's LogBook: the last ``max_lines`` lines of one rank or of
    all ranks merged, filtered by text and attempt, the job's prefix template applied and a
    separator wherever a new attempt begins. It copies nothing: each render reads the
    book's tails (a flood costs what is shown, not what was printed)."""

    def __init__(self, job: JobHandle) -> None:
        self._job = job

    @property
    def version(self) -> int:
        """Changes whenever lines arrive (the dashboard renders again only then)."""
        return self._job.log_book.version

    def close(self) -> None:
        return None  # it holds nothing of the book's

    def ranks(self) -> list[int]:
        return self._job.log_book.ranks()

    def attempts(self) -> list[int]:
        return self._job.log_book.attempts()

    def select(self, rank: int | None = None, text: str = "", attempt: int | None = None,
               max_lines: int = MAX_LOG_LINES) -> tuple[list[LogLine], int]:
        """The last ``max_lines`` matching lines, and how many older matches are not shown."""
        return self._job.log_book.tail(rank, text, attempt, max_lines)

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
        overflow = self._job.log_book.dropped(rank)
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
