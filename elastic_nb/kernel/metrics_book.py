"""The kernel's record of what the ranks reported with ``enb.report``: a bounded book.

Each rank appends ``TIME STEP name=value ...`` lines to ``metrics.txt`` in
its directory (``worker.metrics``). The job's log routes tail those files as
they tail the logs (``wire.logfiles.LogTailer``, one ``LogSource`` a rank and
attempt, stream ``"metrics"``) and hand the lines here. The book parses them
into records and keeps the newest ``max_records`` (500,000 by default; older
ones go, counted in ``dropped``; the files keep everything), and when each
step of each attempt was reached (a float a step: what goodput and the
plot's marks need, cheap to keep for a long run). Local nodes and
nodes whose directory the kernel can read (shared storage) are read; joined
nodes on other machines forward only their logs.

``frame()`` is ``job.metrics``: a pandas DataFrame, one row a record;
``series(name)`` is what a plot draws; ``steps()`` is what goodput reads.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from elastic_nb.model.goodput import StepMark
from elastic_nb.wire.logfiles import LogSource
from elastic_nb.wire.rank_files import METRICS_FILE

if TYPE_CHECKING:
    import pandas

MAX_RECORDS = 500_000
COLUMNS = ("time", "rank", "attempt", "world", "step")


class Record(NamedTuple):
    """One ``enb.report`` call of one rank."""

    time: float
    rank: int
    attempt: int
    world: int
    step: int
    values: dict[str, float]


def metric_sources(sources: Iterable[LogSource]) -> list[LogSource]:
    """The metrics file of every rank whose stdout is among ``sources``."""
    return [LogSource(path=os.path.join(os.path.dirname(s.path), METRICS_FILE), stream="metrics",
                      node=s.node, rank=s.rank, local_rank=s.local_rank, role=s.role,
                      group_rank=s.group_rank, attempt=s.attempt, restart_count=s.restart_count)
            for s in sources if s.stream == "stdout"]


def parse(line: str) -> tuple[float, int, dict[str, float]] | None:
    """A record line as (time, step, values), or None for a header or a damaged line."""
    fields = line.split(" ")
    try:
        values: dict[str, float] = {}
        for field in fields[2:]:
            name, _, text = field.partition("=")
            values[name] = float(text) if "." in text or "e" in text or "n" in text else int(text)
        return float(fields[0]), int(fields[1]), values
    except (ValueError, IndexError):
        return None


class MetricsBook:
    """Bounded, thread-safe: every rank's records in arrival order (a ``LineSink``)."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.max_records = max_records
        self.version = 0
        self.dropped = 0
        self._records: collections.deque[Record] = collections.deque()
        self._names: dict[str, None] = {}
        self._worlds: dict[int, int] = {}  # id(source) -> the world its header named
        self._steps: dict[tuple[int, int], float] = {}  # (attempt, step) -> its latest report
        self._lock = threading.Lock()

    def append(self, source: LogSource, texts: Iterable[str], when: float) -> None:
        parsed: list[Record] = []
        world = self._worlds.get(id(source), 0)
        for text in texts:
            if text.startswith("# world "):
                world = int(text[8:] or 0)
                self._worlds[id(source)] = world
                continue
            fields = parse(text)
            if fields is not None:
                parsed.append(Record(fields[0], source.rank, source.attempt, world, fields[1],
                                     fields[2]))
        if not parsed:
            return
        with self._lock:
            self._records.extend(parsed)
            steps = self._steps
            for kept in parsed:
                key = (kept.attempt, kept.step)
                if kept.time > steps.get(key, 0.0):
                    steps[key] = kept.time
                for name in kept.values:
                    if name not in self._names:
                        self._names[name] = None
            excess = len(self._records) - self.max_records
            for _ in range(max(0, excess)):
                self._records.popleft()
            self.dropped += max(0, excess)
            self.version += 1

    def pending(self, source: LogSource, text: str | None) -> None:
        """Unfinished lines are not records: nothing to show."""

    def names(self) -> list[str]:
        """Every metric name reported, in order of first appearance."""
        with self._lock:
            return list(self._names)

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def steps(self) -> list[StepMark]:
        """When each attempt's steps were reported, the latest rank's report of each (goodput's
        input; one entry a step of an attempt, kept beyond the records' bound)."""
        with self._lock:
            return [StepMark(t, attempt, step) for (attempt, step), t in self._steps.items()]

    def frame(self) -> pandas.DataFrame:
        """Every record kept: ``time`` (epoch seconds), ``rank, attempt, world, step`` and one
        column a metric (NaN where a record did not report it)."""
        import pandas

        records = self.records()
        names = self.names()
        data: dict[str, Any] = {column: [getattr(r, column) for r in records]
                                for column in COLUMNS}
        for name in names:
            data[name] = [r.values.get(name, float("nan")) for r in records]
        return pandas.DataFrame(data, columns=[*COLUMNS, *names])
