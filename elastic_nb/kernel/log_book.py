"""The kernel's record of what the ranks printed: a bounded book, and the job's log routes.

``LogBook`` keeps recent lines per rank in memory, bounded (the files on
disk keep everything), and tells listeners of each new batch. ``JobLogs``
is one job's: it tails the files of local nodes (``LogTailer``), takes the
lines joined nodes send (``Log`` reports) for the sources their ``Started``
report named, and renders the book as ``job.logs()`` and ``job.follow()``
show it. Which route a node's lines take is the node handle's choice
(``kernel.nodes``): this module offers both. The ranks' metrics files lie
beside their logs and are tailed with them, into ``metrics`` (a
``MetricsBook``).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from elastic_nb.kernel.metrics_book import MetricsBook, metric_sources
from elastic_nb.model import terminal
from elastic_nb.model.collapse import collapse as collapse_lines
from elastic_nb.wire.logfiles import LogLine, LogSource, LogTailer
from elastic_nb.wire.reports import Log


@dataclass(frozen=True, slots=True)
class _Batch:
    """Lines of one source that arrived together: numbered ``first`` on, read at ``time``."""

    first: int
    time: float
    source: LogSource
    texts: list[str]

    def line(self, index: int) -> LogLine:
        return LogLine(self.first + index, self.time, self.source, self.texts[index])


class LogBook:
    """Bounded, thread-safe, per-rank buffers of log lines, in arrival order.

    Lines are kept as the batches the tailer read (no object per line until a
    view asks for it), at most ``max_lines_per_rank`` a rank: older batches go
    (counted in ``dropped``; every line stays on disk). Views read what they
    show from here: ``tail`` costs what it returns, not what was printed;
    ``version`` counts the batches appended, so a view knows when to render
    again; listeners (``follow``) get each batch as lines.
    """

    def __init__(self, max_lines_per_rank: int = 20_000) -> None:
        self._max = max_lines_per_rank
        self.version = 0
        self._attempts: set[int] = set()
        self._by_rank: dict[int, collections.deque[_Batch]] = {}
        self._counts: collections.Counter[int] = collections.Counter()  # lines kept, by rank
        self._dropped: collections.Counter[int] = collections.Counter()
        self._seq = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[list[LogLine]], None]] = []
        self._pending: dict[tuple[int, str], tuple[LogSource, str]] = {}  # (rank, stream) -> bar

    def add_listener(self, listener: Callable[[list[LogLine]], None]) -> None:
        """Call ``listener(lines)`` with each new batch of lines (from the tailer thread)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[LogLine]], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def append(self, source: LogSource, texts: Iterable[str], when: float) -> None:
        texts = list(texts)
        if not texts:
            return
        with self._lock:
            if len(texts) > self._max:  # more than the bound in one read: only its end is kept
                self._dropped[source.rank] += len(texts) - self._max
                self._seq += len(texts) - self._max
                texts = texts[-self._max:]
            batch = _Batch(self._seq, when, source, texts)
            self._seq += len(texts)
            buffer = self._by_rank.setdefault(source.rank, collections.deque())
            buffer.append(batch)
            self._counts[source.rank] += len(texts)
            while self._counts[source.rank] > self._max:
                oldest = buffer[0]
                excess = self._counts[source.rank] - self._max
                if excess >= len(oldest.texts):
                    buffer.popleft()
                    gone = len(oldest.texts)
                else:  # keep the newest lines of the oldest batch
                    buffer[0] = _Batch(oldest.first + excess, oldest.time, oldest.source,
                                       oldest.texts[excess:])
                    gone = excess
                self._counts[source.rank] -= gone
                self._dropped[source.rank] += gone
            self._pending.pop((source.rank, source.stream), None)
            self._attempts.add(source.attempt)
            self.version += 1
            listeners = list(self._listeners)
        if listeners:
            lines = [batch.line(i) for i in range(len(batch.texts))]
            for listener in listeners:
                listener(lines)

    def pending(self, source: LogSource, text: str | None) -> None:
        """What a rank's unfinished line shows now (a progress bar), or None once it ended."""
        with self._lock:
            if text is None:
                self._pending.pop((source.rank, source.stream), None)
            else:
                self._pending[(source.rank, source.stream)] = (source, text)

    def pending_lines(self, rank: int | None = None) -> list[tuple[LogSource, str]]:
        """The unfinished lines shown at the end of a view, by rank."""
        with self._lock:
            return [entry for (r, _), entry in sorted(self._pending.items())
                    if rank is None or r == rank]

    def lines(
        self, rank: int | None = None, stream: str | None = None, attempt: int | None = None
    ) -> list[LogLine]:
        """Every line kept (of ``rank``, or of all ranks merged), filtered, in order."""
        with self._lock:
            batches = [b for r, buffer in self._by_rank.items() if rank in (None, r)
                       for b in buffer
                       if stream in (None, b.source.stream) and attempt in (None, b.source.attempt)]
        batches.sort(key=lambda b: b.first)
        return [b.line(i) for b in batches for i in range(len(b.texts))]

    def tail(self, rank: int | None = None, text: str = "", attempt: int | None = None,
             count: int = 200) -> tuple[list[LogLine], int]:
        """The last ``count`` lines (of ``rank``, or of every rank merged) that contain
        ``text`` and are of ``attempt``, and how many older ones match and are not among
        them. Reads from the newest end: the cost follows ``count``, not the buffer."""
        picked: list[LogLine] = []
        total = 0
        with self._lock:
            for r, buffer in self._by_rank.items():
                if rank is not None and r != rank:
                    continue
                found = 0
                for batch in reversed(buffer):
                    if attempt is not None and batch.source.attempt != attempt:
                        continue
                    if not text:
                        take = min(len(batch.texts), max(0, count - found))
                        picked += [batch.line(i) for i in range(len(batch.texts) - take,
                                                                len(batch.texts))]
                        found += len(batch.texts)
                        continue
                    for i in range(len(batch.texts) - 1, -1, -1):
                        if text in batch.texts[i]:
                            found += 1
                            if found <= count:
                                picked.append(batch.line(i))
                total += found
        picked.sort(key=lambda line: line.seq)
        shown = picked[max(0, len(picked) - count):]
        return shown, total - len(shown)

    def ranks(self) -> list[int]:
        with self._lock:
            return sorted(self._by_rank)

    def attempts(self) -> list[int]:
        with self._lock:
            return sorted(self._attempts)

    def dropped(self, rank: int | None = None) -> int:
        """How many lines fell out of memory (they are still on disk)."""
        with self._lock:
            if rank is None:
                return sum(self._dropped.values())
            return self._dropped[rank]

    def last_line_time(self) -> dict[int, float]:
        """When each rank last printed a line."""
        with self._lock:
            return {rank: buf[-1].time for rank, buf in self._by_rank.items() if buf}


class JobLogs:
    """One job's lines: the book, the tailer of local files, the sources joined nodes send."""

    def __init__(self, log_dir: str, template: str) -> None:
        self.book = LogBook()
        self.log_dir = log_dir
        self.template = template
        self._tailer = LogTailer(self.book)
        self.metrics = MetricsBook()
        self._metrics_tailer = LogTailer(self.metrics)
        self._remote: dict[tuple[int, int, str, int], LogSource] = {}

    def follow_files(self, sources: list[LogSource]) -> None:
        """Tail these files (a local node's ranks)."""
        self._tailer.follow(sources)
        self._metrics_tailer.follow(metric_sources(sources))

    def expect_lines(self, sources: list[LogSource]) -> None:
        """Take these sources' lines when their node sends them (a joined node's ranks)."""
        self._remote.update(((s.node, s.rank, s.stream, s.attempt), s) for s in sources)

    def received(self, node: int, report: Log, now: float) -> None:
        """Lines a joined node sent, dated by our clock; those of unknown sources are dropped."""
        source = self._remote.get((node, report.rank, report.stream, report.attempt))
        if source is not None:
            self.book.append(source, report.lines, now)

    def retire(self, node: int) -> None:
        """The node's files are read to their end at the next poll, then no longer followed."""
        for tailer in (self._tailer, self._metrics_tailer):
            tailer.retire(lambda s: s.node == node)

    def poll(self) -> None:
        self._tailer.poll()
        self._metrics_tailer.poll()

    def close(self) -> None:
        """Read every file to its end, once."""
        for tailer in (self._tailer, self._metrics_tailer):
            tailer.retire_all()
            tailer.poll()

    def text(self, rank: int | None = None, stream: str | None = None,
             attempt: int | None = None, collapse: bool = False) -> str:
        """What ``job.logs()`` shows (see there)."""
        if stream is not None and stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        picked = self.book.lines(rank, stream, attempt)
        shown = collapse_lines(picked) if collapse and rank is None else picked
        lines = [line.render(self.template) for line in shown]
        lines += [source.prefix(self.template) + terminal.plain(text)
                  for source, text in self.book.pending_lines(rank)
                  if stream in (None, source.stream) and attempt in (None, source.attempt)]
        dropped = self.book.dropped(rank)
        if dropped:
            lines.insert(0, f"[elastic_nb] {dropped} earlier lines were dropped from memory; "
                            f"every line is on disk under {self.log_dir}")
        return "\n".join(lines) + ("\n" if lines else "")

    def iterate(self, ended: Callable[[], bool], collapse: bool = False) -> Iterator[str]:
        """What ``job.follow()`` yields, until ``ended()`` (see there)."""
        pending: queue.SimpleQueue[list[LogLine]] = queue.SimpleQueue()
        self.book.add_listener(pending.put)
        try:
            while True:
                try:
                    batch = pending.get(timeout=0.1)
                except queue.Empty:
                    if ended():
                        break
                    continue
                yield from self._rendered(batch, collapse)
            while not pending.empty():
                yield from self._rendered(pending.get(), collapse)
        finally:
            self.book.remove_listener(pending.put)

    def _rendered(self, batch: list[LogLine], collapse: bool) -> Iterable[str]:
        for line in collapse_lines(batch) if collapse else batch:
            yield line.render(self.template)
