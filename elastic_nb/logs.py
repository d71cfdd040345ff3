"""Per-rank logs: where they are written, how they are tailed, how they are kept.

Agent side: ``NodeLogsSpecs`` lays each node's logs out as torch does
(``attempt_N/<local_rank>/{stdout,stderr}.log`` plus ``error.json``), except
that an attempt directory is never reused, so a restart caused by a membership
change cannot wipe the lines printed before it.

Kernel side: ``LogTailer`` follows those files while the job runs and feeds
complete lines into a ``LogBook``: bounded per-rank buffers (the files on disk
keep everything) that render lines with torch-style prefix templates. A node
that joined from another machine runs its own ``LogTailer`` and sends the lines
to the Job, which appends them to the same book.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from string import Template
from typing import TYPE_CHECKING, Protocol

from torch.distributed.elastic.multiprocessing.api import LogsDest, LogsSpecs, Std

from elastic_nb.payload import TORCH_VARS_KEY

if TYPE_CHECKING:  # protocol builds on plan, which builds on this module
    from elastic_nb.protocol import Started

PREFIX_FIELDS = ("role_name", "rank", "local_rank", "group_rank", "restart_count", "node")
DEFAULT_PREFIX_TEMPLATE = "[${role_name}${rank}]:"
STREAMS = ("stdout", "stderr")
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


class NodeLogsSpecs(LogsSpecs):
    """torch's log layout under one node's directory, a fresh attempt dir per start."""

    def __init__(self, node_dir: str, tee: bool = False) -> None:
        os.makedirs(node_dir, exist_ok=True)
        super().__init__(log_dir=node_dir, redirects=Std.ALL, tee=Std.ALL if tee else Std.NONE)
        self._tees = tee
        self._next_attempt = 0
        self.last_attempt = -1

    @property
    def root_log_dir(self) -> str:
        return str(self._root_log_dir)

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        self.last_attempt = self._next_attempt
        self._next_attempt += 1
        attempt_dir = os.path.join(self.root_log_dir, f"attempt_{self.last_attempt}")
        dest = LogsDest(
            filtered_stdout=os.path.join(attempt_dir, "filtered_stdout.log"),
            filtered_stderr=os.path.join(attempt_dir, "filtered_stderr.log"),
        )
        for local_rank, env in envs.items():
            rank_dir = os.path.join(attempt_dir, str(local_rank))
            os.makedirs(rank_dir)
            dest.stdouts[local_rank] = os.path.join(rank_dir, "stdout.log")
            dest.stderrs[local_rank] = os.path.join(rank_dir, "stderr.log")
            dest.error_files[local_rank] = os.path.join(rank_dir, "error.json")
            env["TORCHELASTIC_ERROR_FILE"] = dest.error_files[local_rank]
            # what torch set for this rank, so the worker can rebuild its environment on
            # top of the job's (a forkserver's children inherit an older job's)
            env[TORCH_VARS_KEY] = ",".join(sorted(env))
            if self._tees:
                dest.tee_stdouts[local_rank] = dest.stdouts[local_rank]
                dest.tee_stderrs[local_rank] = dest.stderrs[local_rank]
        return dest


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


@dataclass(frozen=True, eq=False)
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
        prefix = self.source.prefix(template)
        return f"{prefix}{self.text}" if prefix else self.text


class LogBook:
    """Bounded, thread-safe, per-rank buffers of log lines, in arrival order."""

    def __init__(self, max_lines_per_rank: int = 20_000) -> None:
        self._max = max_lines_per_rank
        self._by_rank: dict[int, collections.deque[LogLine]] = {}
        self._dropped: collections.Counter[int] = collections.Counter()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[list[LogLine]], None]] = []

    def add_listener(self, listener: Callable[[list[LogLine]], None]) -> None:
        """Call ``listener(lines)`` with each new batch of lines (from the tailer thread)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[LogLine]], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def append(self, source: LogSource, texts: Iterable[str], when: float) -> None:
        with self._lock:
            buffer = self._by_rank.get(source.rank)
            if buffer is None:
                buffer = self._by_rank[source.rank] = collections.deque(maxlen=self._max)
            batch = [LogLine(next(self._seq), when, source, text) for text in texts]
            overflow = len(buffer) + len(batch) - self._max
            if overflow > 0:
                self._dropped[source.rank] += overflow
            buffer.extend(batch)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(batch)

    def lines(
        self, rank: int | None = None, stream: str | None = None, attempt: int | None = None
    ) -> list[LogLine]:
        with self._lock:
            if rank is None:
                buffers = [list(b) for b in self._by_rank.values()]
                picked = sorted(itertools.chain.from_iterable(buffers), key=lambda line: line.seq)
            else:
                picked = list(self._by_rank.get(rank, ()))
        return [
            line
            for line in picked
            if (stream is None or line.stream == stream)
            and (attempt is None or line.attempt == attempt)
        ]

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


def started_sources(node: int, started: Started) -> list[LogSource]:
    """The stdout and stderr of every rank a ``started`` report lists."""
    return [
        LogSource(path=getattr(w, stream), stream=stream, node=node, rank=w.rank,
                  local_rank=w.local_rank, role=started.role, group_rank=started.group_rank,
                  attempt=started.attempt, restart_count=started.restart_count)
        for w in started.workers for stream in ("stdout", "stderr")
    ]


class LineSink(Protocol):
    """Where a LogTailer puts the lines it reads: a LogBook, or a joined node's channel."""

    def append(self, source: LogSource, texts: Iterable[str], when: float) -> None: ...


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
        if (final and rest) or len(rest) > _MAX_PARTIAL_LINE:
            complete.append(rest)
            rest = b""
        source.partial = rest
        if complete:
            texts = [c.decode("utf-8", errors="replace").rstrip("\r") for c in complete]
            self._book.append(source, texts, now)
