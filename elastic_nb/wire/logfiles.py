"""Per-rank log files as read: sources, lines, prefixes, and the tailer that follows them.

A rank writes its stdout and stderr to files (``node.logs_spec`` lays them
out as torch does). Whoever reads them uses this module: the kernel's log
book for a local node, a joined node's forwarder for its own files (it sends
the lines to the Job). ``LogTailer`` follows the growing files and hands
complete lines to a ``LineSink``; ``LogSource`` names one stream of one rank
in one attempt and renders torch-style prefix templates for it.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from string import Template
from typing import Protocol

from elastic_nb.model import terminal
from elastic_nb.wire.reports import Started

PREFIX_FIELDS = ("role_name", "rank", "local_rank", "group_rank", "restart_count", "node")
DEFAULT_PREFIX_TEMPLATE = "[${role_name}${rank}]:"
_MAX_PARTIAL_LINE = 64 << 10


def template_fields(template: str) -> set[str]:
    """The placeholder names a prefix template uses."""
    names = set()
    for match in Template.pattern.finditer(template):
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def render_prefix(template: str, **fields: object) -> str:
    return Template(template).safe_substitute(fields)


@dataclass(eq=False)
class LogSource:
    """One stream of one rank in one attempt: the file and who wrote it."""

    path: str
    stream: str
    node: int
    rank: int
    local_rank: int
    role: str
    group_rank: int
    attempt: int
    restart_count: int
    position: int = 0
    partial: bytes = b""
    _prefixes: dict[str, str] = field(default_factory=dict)

    def prefix(self, template: str) -> str:
        cached = self._prefixes.get(template)
        if cached is None:
            cached = self._prefixes[template] = render_prefix(
                template,
                role_name=self.role,
                rank=self.rank,
                local_rank=self.local_rank,
                group_rank=self.group_rank,
                restart_count=self.restart_count,
                node=self.node,
            )
        return cached


@dataclass(frozen=True, eq=False, slots=True)
class LogLine:
    """One line a rank printed (without its newline)."""

    seq: int
    time: float
    source: LogSource
    text: str

    @property
    def rank(self) -> int:
        return self.source.rank

    @property
    def stream(self) -> str:
        return self.source.stream

    @property
    def attempt(self) -> int:
        return self.source.attempt

    def render(self, template: str) -> str:
        """The line as plain text, prefixed (escape sequences stripped)."""
        prefix = self.source.prefix(template)
        return f"{prefix}{terminal.plain(self.text)}"

    def render_html(self, template: str) -> str:
        """The line as HTML, prefixed, its colours as spans."""
        return html.escape(self.source.prefix(template)) + terminal.to_html(self.text)


def started_sources(node: int, started: Started) -> list[LogSource]:
    """The stdout and stderr of every rank a ``started`` report lists."""
    return [
        LogSource(path=getattr(w, stream), stream=stream, node=node, rank=w.rank,
                  local_rank=w.local_rank, role=started.role, group_rank=started.group_rank,
                  attempt=started.attempt, restart_count=started.restart_count)
        for w in started.workers for stream in ("stdout", "stderr")
    ]


class LineSink(Protocol):
    """Where a LogTailer puts the lines it reads: a LogBook, or a joined node's channel.

    ``pending`` is the unfinished line a source shows now (a progress bar being
    redrawn with carriage returns), or None once it finished.
    """

    def append(self, source: LogSource, texts: Iterable[str], when: float) -> None: ...

    def pending(self, source: LogSource, text: str | None) -> None: ...


class LogTailer:
    """Follows growing log files and feeds complete lines into a LineSink.

    ``poll`` is called from the Job's pump thread. Sources are retired once
    the process writing them is gone and their last bytes have been read.
    """

    def __init__(self, book: LineSink) -> None:
        self._book = book
        self._active: list[LogSource] = []
        self._retiring: list[LogSource] = []
        self._lock = threading.Lock()

    def follow(self, sources: Iterable[LogSource]) -> None:
        with self._lock:
            self._active.extend(sources)

    def retire(self, predicate: Callable[[LogSource], bool]) -> None:
        """Read these sources to their end at the next poll, then stop following them."""
        with self._lock:
            keep: list[LogSource] = []
            for source in self._active:
                (self._retiring if predicate(source) else keep).append(source)
            self._active = keep

    def retire_all(self) -> None:
        self.retire(lambda source: True)

    def poll(self) -> None:
        with self._lock:
            active, retiring = list(self._active), self._retiring
            self._retiring = []
        now = time.time()
        for source in active:
            self._read(source, now, final=False)
        for source in retiring:
            self._read(source, now, final=True)

    def _read(self, source: LogSource, now: float, final: bool) -> None:
        try:
            with open(source.path, "rb") as f:
                f.seek(source.position)
                data = f.read()
        except FileNotFoundError:
            return
        if not data and not (final and source.partial):
            return
        source.position += len(data)
        data = source.partial + data
        *complete, rest = data.split(b"\n")
        if len(rest) > _MAX_PARTIAL_LINE:  # a bar redrawn for long: only its last drawing counts
            rest = rest[rest.rfind(b"\r", 0, len(rest) - 1) + 1:]
        if (final and rest) or len(rest) > _MAX_PARTIAL_LINE:
            complete.append(rest)
            rest = b""
        had_pending = bool(source.partial)
        source.partial = rest
        if complete:
            # one decode for the chunk; carriage returns handled only where there are any
            joined = b"\n".join(complete).decode("utf-8", errors="replace")
            texts = joined.split("\n")
            if "\r" in joined:
                texts = [terminal.overwrite(t.rstrip("\r")) for t in texts]
            self._book.append(source, texts, now)
        if rest and b"\r" in rest:
            self._book.pending(source, terminal.overwrite(
                rest.decode("utf-8", errors="replace").rstrip("\r")))
        elif had_pending and not rest:
            self._book.pending(source, None)
