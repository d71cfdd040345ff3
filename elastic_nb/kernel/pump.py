"""The pump: one thread per job that reads every node's channel and feeds the job's state.

It waits on all channels at once (a selector), parses what arrives
(``wire.reports``), and dispatches each report by its kind (``HANDLERS``):
most go to the state rules (``model.rules``) under the job's lock, a host's
readiness to the launch gate, a host's last report and a channel's end to
``JobCore.node_gone``, log lines and new log sources to the node's handle.
Between reads it tails local log files. It ends once the job is done and
every channel has closed, after reading every file to its end.
"""

from __future__ import annotations

import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.nodes import NodeHandle
from elastic_nb.model import rules
from elastic_nb.model.state import NodeStatus
from elastic_nb.wire.logfiles import started_sources
from elastic_nb.wire.records import ProtocolError
from elastic_nb.wire.reports import HostReady, Log, NodeDone, Report, ReportKind, Started, parse_report

POLL_INTERVAL = 0.05


class Pump:
    """The thread that moves reports from the node handles' channels into a ``JobCore``.

    ``watch`` a node's channel (from any thread); ``start``, ``wake``,
    ``join`` and ``is_alive``; ``on_thread`` says whether the caller is the
    pump itself (which must not wait for itself).
    """

    def __init__(self, core: JobCore, on_close: Callable[[], None]) -> None:
        self._core = core
        self._on_close = on_close
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._added: queue.SimpleQueue[NodeHandle] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"elastic_nb-{core.run_id}",
                                        daemon=True)
        core.wake = self.wake

    def watch(self, node: NodeHandle) -> None:
        self._added.put(node)
        self.wake()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        try:
            self._wakeup_w.send(b"x")
        except OSError:
            pass

    def join(self) -> None:
        if self._thread.is_alive() and not self.on_thread():
            self._thread.join()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        core = self._core
        try:
            while True:
                for key, _ in self._selector.select(POLL_INTERVAL):
                    if key.data is None:
                        self._wakeup_r.recv(4096)
                        self._register_added()
                    else:
                        self._read(key.data)
                core.logs.poll()
                with core.lock:
                    if core.state.done:
                        self._reap_exited()
                        if not any(k.data is not None for k in self._selector.get_map().values()):
                            break
        finally:
            core.logs.close()
            self._close()

    def _register_added(self) -> None:
        while not self._added.empty():
            node = self._added.get()
            self._selector.register(node.channel.socket, selectors.EVENT_READ, node.index)

    def _read(self, index: int) -> None:
        node = self._core.nodes[index]
        try:
            messages, ended = node.channel.receive_ready()
            reports = [parse_report(message) for message in messages]
        except ProtocolError as exc:
            self._core.protocol_error(index, exc)
            return
        except ConnectionError:
            reports, ended = [], True
        for report in reports:
            HANDLERS[report.kind](self, index, report)
        if ended:
            self._unwatch(node)
            self._core.node_gone(index)

    def _unwatch(self, node: NodeHandle) -> bool:
        try:
            self._selector.unregister(node.channel.socket)
        except (KeyError, ValueError):
            return False
        return True

    def _reap_exited(self) -> None:
        """A local host that exited without its channel saying so is gone too."""
        for index, node in list(self._core.nodes.items()):
            if node.exited() and self._unwatch(node):
                self._core.node_gone(index)

    def _close(self) -> None:
        with self._core.lock:
            for node in self._core.nodes.values():
                node.close()
            self._selector.close()
            self._wakeup_r.close()
            self._wakeup_w.close()
            self._on_close()
            self._core.changed.notify_all()

    # ------------------------------------------------------- the handlers

    def _apply(self, index: int, report: Report) -> None:
        core = self._core
        with core.lock:
            core.apply(rules.apply(core.state, index, report, time.time()))

    def _new_attempt(self, index: int, report: Report) -> None:
        """A node restarts or starts workers: the old attempt's files are read to their end."""
        core = self._core
        with core.lock:
            core.logs.retire(index)
            if isinstance(report, Started):
                core.nodes[index].follow(started_sources(index, report), core.logs)
        self._apply(index, report)

    def _lines(self, index: int, report: Log) -> None:
        self._core.nodes[index].lines(report, self._core.logs, time.time())  # our clock

    def _host_ready(self, index: int, report: HostReady) -> None:
        with self._core.lock:
            self._core.gate.host_ready(index)

    def _node_done(self, index: int, report: NodeDone) -> None:
        """A local host finished its node of this job: the node is gone, the host goes back."""
        core = self._core
        node = core.nodes[index]
        self._unwatch(node)
        core.node_gone(index, report.exitcode)
        with core.lock:
            killed = core.state.nodes[index].status == NodeStatus.KILLED
        node.finished(report, core.plan.keep_warm, killed)


HANDLERS: dict[ReportKind, Callable[[Pump, int, Any], None]] = {
    ReportKind.RENDEZVOUS: Pump._apply,
    ReportKind.STARTED: Pump._new_attempt,
    ReportKind.WORKER_FAILED: Pump._apply,
    ReportKind.RESTARTING: Pump._new_attempt,
    ReportKind.SUCCEEDED: Pump._apply,
    ReportKind.FAILED: Pump._apply,
    ReportKind.AGENT_ERROR: Pump._apply,
    ReportKind.PAUSED: Pump._apply,
    ReportKind.RESUMED: Pump._apply,
    ReportKind.LOG: Pump._lines,
    ReportKind.HOST_READY: Pump._host_ready,
    ReportKind.NODE_DONE: Pump._node_done,
}
"""How the pump acts on each report kind (every kind of ``wire.reports``)."""
