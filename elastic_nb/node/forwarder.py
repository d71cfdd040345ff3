"""A joined node's log lines, sent to the Job: its files are on its own machine.

A local node's files are read by the Job itself; a node that joined from
another machine tails its own files (they also print in its terminal) and
sends the lines as ``Log`` reports, after the ``Started`` report that names
their sources (the Job drops lines of ranks it has not seen).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from elastic_nb.node.link import JobLink
from elastic_nb.wire.logfiles import LogSource, LogTailer
from elastic_nb.wire.reports import Log


class LogForwarder:
    """Sends the lines a joined node's ranks print to the Job, a few batches a second.

    A local node's files are read by the Job itself; a node that joined from
    another machine tails its own files (they also print in its terminal).
    """

    INTERVAL = 0.1

    def __init__(self, channel: JobLink) -> None:
        self._channel = channel
        self._tailer = LogTailer(self)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="elastic_nb-log-forwarder",
                                        daemon=True)
        self._thread.start()

    def append(self, source: LogSource, texts: Iterable[str], when: float) -> None:
        self._channel.send(Log(rank=source.rank, stream=source.stream,
                                               attempt=source.attempt, lines=tuple(texts)))

    def pending(self, source: LogSource, text: str | None) -> None:
        """An unfinished line (a bar being redrawn) is not sent: the finished one will be."""
        return None

    def follow(self, sources: list[LogSource]) -> None:
        """Forward these files from now on; the previous attempt's are read to their end."""
        self._tailer.retire_all()
        self._tailer.follow(sources)

    def close(self) -> None:
        """Send every line still unsent, then stop."""
        self._stopped.set()
        self._thread.join()
        self._tailer.retire_all()
        self._tailer.poll()

    def _run(self) -> None:
        while not self._stopped.wait(self.INTERVAL):
            self._tailer.poll()
