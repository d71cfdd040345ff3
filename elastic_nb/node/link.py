"""A node host's end of its channel to the Job: reports out, and liveness both ways.

``JobLink`` sends the host's reports (once the Job is gone a send is
dropped, never raised into torch's agent: the lines are on disk and the
host is leaving). While a node runs it sends a ``Heartbeat`` a few times
per ``liveness_timeout``, from a thread of its own, so a host that freezes
goes silent and the Job declares it lost. A node that joined from another
machine also watches the Job: when no command (the Job's heartbeats
included) arrives for ``liveness_timeout`` seconds, the link is cut and
``on_lost`` is told how long it was silent. The watch runs on its own
thread: a send blocked by a partition cannot hide the silence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from elastic_nb.wire.channel import Channel
from elastic_nb.wire.options import heartbeat_interval
from elastic_nb.wire.records import Message
from elastic_nb.wire.reports import Heartbeat


class JobLink:
    """The host's channel to the Job, with heartbeats out and a watch on the Job's."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._last_heard = time.monotonic()
        self._lock = threading.Lock()
        self._beating: threading.Event | None = None
        self._frozen = False
        self.lost = False

    def send(self, record: Message) -> None:
        """Send a report; dropped once the Job is gone or while the node is frozen."""
        if self._frozen or self.lost:
            return
        try:
            self.channel.send(record)
        except OSError:
            self.lost = True

    def heard(self) -> None:
        """A command arrived: the Job is there."""
        self._last_heard = time.monotonic()

    def freeze(self, frozen: bool) -> None:
        """A frozen node sends nothing, heartbeats included (the Job's ``freeze_node``)."""
        self._frozen = frozen

    def start(self, liveness_timeout: float,
              on_lost: Callable[[float], None] | None = None) -> None:
        """Beat while a node runs; with ``on_lost``, also watch for the Job's silence."""
        self.stop()
        stopped = threading.Event()
        with self._lock:
            self._beating = stopped
        self._last_heard = time.monotonic()
        interval = heartbeat_interval(liveness_timeout)
        threading.Thread(target=self._beat, args=(stopped, interval), daemon=True,
                         name="elastic_nb-heartbeat").start()
        if on_lost is not None:
            threading.Thread(target=self._watch, args=(stopped, interval, liveness_timeout, on_lost),
                             daemon=True, name="elastic_nb-watch").start()

    def stop(self) -> None:
        with self._lock:
            if self._beating is not None:
                self._beating.set()
                self._beating = None

    def _beat(self, stopped: threading.Event, interval: float) -> None:
        while not stopped.wait(interval):
            self.send(Heartbeat())

    def _watch(self, stopped: threading.Event, interval: float, timeout: float,
               on_lost: Callable[[float], None]) -> None:
        while not stopped.wait(interval):
            silent = time.monotonic() - self._last_heard
            if silent > timeout:
                self.lost = True
                self.channel.shutdown()  # a send blocked by the partition fails now
                on_lost(silent)
                return
