"""The pump: one thread per job that reads every node's channel and feeds the job's state.

It waits on all channels at once (a selector), parses what arrives
(``wire.reports``), and dispatches each report by its kind (``HANDLERS``):
most go to the state rules (``model.rules``) under the job's lock, a host's
readiness to the launch gate, a host's last report and a channel's end to
``JobCore.node_gone``, log lines and new log sources to the node's handle,
and so do a joined node's answers (stacks, hang answers) and its relayed
debug sessions' output: the handle hands them on without waiting.
Between reads it tails local log files, looks at the checkpoint directory
(``JobCore.read_checkpoints``) and keeps the nodes' liveness: it
sends each node a heartbeat a few times per ``liveness_timeout``, and a node
it heard from once and then not for ``liveness_timeout`` seconds is lost
(``JobCore.node_silent``). It ends once the job is done and every channel
has closed, after reading every file to its end.
"""

from __future__ import annotations

import queue
import select
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
from elastic_nb.wire.commands import Heartbeat
from elastic_nb.wire.logfiles import started_sources
from elastic_nb.wire.options import heartbeat_interval
from elastic_nb.wire.records import ProtocolError
from elastic_nb.wire.reports import (
    HostReady,
    Log,
    NodeDone,
    Report,
    ReportKind,
    Restarting,
    Started,
    parse_report,
)

POLL_INTERVAL = 0.05
BOOT_GRACE = 20.0  # seconds a new host may take to start (torch imported) before it is judged


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
        self._timeout = core.plan.options.liveness_timeout
        self._beat_every = heartbeat_interval(self._timeout)
        self._last_beat = 0.0
        self._heard: dict[int, float] = {}  # node -> when it last sent anything (monotonic)
        self._stopped: dict[int, float] = {}  # booting node -> since when its process is stopped
        self._thread = threading.Thread(target=self._loop, name=f"elastic_nb-{core.run_id}",
                                        daemon=True)
        core.wake = self.wake

    def watch(self, node: NodeHandle) -> None:
        """Read this node's channel from now on, and judge its liveness: a new host has
        ``BOOT_GRACE`` more to say its first word (it imports torch first)."""
        self._added.put(node)
        self._heard[node.index] = time.monotonic() + (BOOT_GRACE if node.booting else 0.0)
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
                core.read_checkpoints()
                self._keep_liveness()
                with core.lock:
                    if core.state.done:
                        self._reap_exited()
                        if not any(k.data is not None for k in self._selector.get_map().values()):
                            break
        finally:
            core.logs.close()
            core.read_checkpoints(force=True)
            self._close()

    def _register_added(self) -> None:
        while not self._added.empty():
            node = self._added.get()
            self._selector.register(node.wire.socket, selectors.EVENT_READ, node.index)

    def _read(self, index: int) -> None:
        node = self._core.nodes[index]
        try:
            messages, ended = node.wire.receive_ready()
            reports = [parse_report(message) for message in messages]
        except ProtocolError as exc:
            self._core.protocol_error(index, exc)
            return
        except ConnectionError:
            messages, reports, ended = [], [], True
        if messages:
            self._heard[index] = time.monotonic()
        for report in reports:
            HANDLERS[report.kind](self, index, report)
        if ended:
            self._unwatch(node)
            self._core.node_gone(index)

    def _unwatch(self, node: NodeHandle) -> bool:
        self._heard.pop(node.index, None)
        try:
            self._selector.unregister(node.wire.socket)
        except (KeyError, ValueError):
            return False
        return True

    def _keep_liveness(self) -> None:
        """Beat to every node; a node silent past the liveness timeout is lost."""
        now = time.monotonic()
        if now - self._last_beat >= self._beat_every:
            self._last_beat = now
            for index in list(self._heard):
                self._core.nodes[index].send(Heartbeat())
        with self._core.lock:
            for index in self._heard:
                node = self._core.nodes[index]
                if node.held():  # silent until it is configured
                    self._heard[index] = now
                elif node.booting and node.stopped():  # frozen as it starts: no grace for it
                    self._heard[index] = min(self._heard[index], self._stopped.setdefault(index, now))
                else:
                    self._stopped.pop(index, None)
            nodes = self._core.state.nodes
            silent = [(i, now - t) for i, t in self._heard.items()
                      if now - t > self._timeout and nodes[i].status.live and not nodes[i].stopping]
        for index, seconds in silent:
            if select.select([self._core.nodes[index].wire.socket], [], [], 0)[0]:
                continue  # it did speak: this thread was late to read it
            self._heard.pop(index, None)
            self._core.node_silent(index, seconds)

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

    def _restarting(self, index: int, report: Restarting) -> None:
        """A node restarts its group: nodes that wait in the exit barrier of the world it
        left are stopped (their results are in; see ``rules.abandoned_in_exit_barrier``)."""
        self._new_attempt(index, report)
        core = self._core
        with core.lock:
            waiting = rules.abandoned_in_exit_barrier(core.state, index)
        core.stop_in_background(waiting)

    def _answered(self, index: int, report: Report) -> None:
        """An answer to a request, or a relayed debug session's output or end: the waiting
        request or the session's relay takes it (queued: nothing here waits on them)."""
        self._core.nodes[index].answered(report)

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
    ReportKind.WORKER_FAILED: lambda pump, index, report: pump._core.worker_failed(index, report),
    ReportKind.RESTARTING: Pump._restarting,
    ReportKind.SUCCEEDED: Pump._apply,
    ReportKind.FAILED: Pump._apply,
    ReportKind.AGENT_ERROR: Pump._apply,
    ReportKind.PAUSED: Pump._apply,
    ReportKind.RESUMED: Pump._apply,
    ReportKind.LOG: Pump._lines,
    ReportKind.HOST_READY: Pump._host_ready,
    ReportKind.NODE_DONE: Pump._node_done,
    ReportKind.HEARTBEAT: lambda pump, index, report: None,  # heard: that is all it says
    ReportKind.LEAVING: lambda pump, index, report: pump._core.node_leaving(index, report.reason),
    ReportKind.STACKS: Pump._answered,
    ReportKind.HANG_ANSWERS: Pump._answered,
    ReportKind.DEBUG_OUTPUT: Pump._answered,
    ReportKind.DEBUG_ENDED: Pump._answered,
    ReportKind.STATE_FORGED: Pump._apply,
}
"""How the pump acts on each report kind (every kind of ``wire.reports``)."""
