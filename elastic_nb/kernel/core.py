"""One job's kernel side: its state under one lock, its node handles, and what events set off.

``JobCore`` is what the ``Job`` handle and its ``Pump`` share. The pump
feeds it reports and channel ends, and has it read the job's checkpoint
directory; the handle's commands go through it to the node handles.
``apply`` tells listeners and waiters of new events and acts on the job's
end: a failed job stops its remaining nodes, a job that succeeded ends the
exit-barrier waits of nodes that wait for a lost peer. A lost node makes the
survivors re-form at once (``restart_survivors``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from elastic_nb.kernel.checkpoints import CheckpointWatch
from elastic_nb.kernel.log_book import JobLogs
from elastic_nb.kernel.nodes import LaunchGate, NodeHandle
from elastic_nb.model import checkpoint_events, rules, scheduling
from elastic_nb.model.hangs import HangReport
from elastic_nb.model.placement import Placement
from elastic_nb.model.plan import JobPlan
from elastic_nb.model.state import Event, EventKind, JobState, NodeStatus
from elastic_nb.wire import auth
from elastic_nb.wire.commands import Restart, Stop
from elastic_nb.wire.records import ProtocolError
from elastic_nb.wire.reports import WorkerFailed

EXIT_BARRIER_GRACE = 3.0  # after success, how long agents may take to pass torch's exit barrier


class JobCore:
    """The state, lock, listeners, logs and node handles of one job.

    ``apply`` (events out of a rule); ``node_gone``, ``protocol_error`` and
    ``restart_survivors`` (a node lost or misbehaving); ``stop_nodes`` and
    ``stopping_nodes`` (ending nodes, killing or letting go of those that do
    not stop); ``node_leaving`` (a node that leaves on its own). ``key`` is
    the job's secret (``wire.auth``). ``wake`` is the pump's, set when it starts.
    """

    def __init__(self, plan: JobPlan, endpoint: str) -> None:
        self.plan = plan
        self.endpoint = endpoint
        self.key = auth.new_key()  # the job's secret: what its nodes and the Job sign with
        self.placements: list[Placement] = []  # where its nodes elsewhere were started
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.state = JobState(started_at=time.time())
        self.listeners: list[Callable[[Event], None]] = []
        self.logs = JobLogs(plan.log_dir, plan.options.log_line_prefix_template)
        self.checkpoints = CheckpointWatch(plan.options.checkpoint_dir, plan.run_id)
        self.nodes: dict[int, NodeHandle] = {}
        self.gate = LaunchGate(self.nodes)
        self.wake: Callable[[], None] = lambda: None

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    def apply(self, events: list[Event]) -> None:
        """Tell listeners and waiters of new events; act on the job's end (under the lock)."""
        for event in events:
            for listener in list(self.listeners):
                listener(event)
            if event.kind == EventKind.FAILED:
                self._stop_remaining_nodes()
            elif event.kind == EventKind.SUCCEEDED:
                self._end_exit_barrier_waits()
        if events:
            self.changed.notify_all()
            if self.state.done:
                self.wake()

    def read_checkpoints(self, force: bool = False) -> None:
        """New complete checkpoints and resumes in the job's checkpoint directory, as events
        (a few times a second, or now with ``force``: the job's last look)."""
        if not (force or self.checkpoints.due(time.monotonic())):
            return
        present, new, restores = self.checkpoints.poll()
        with self.lock:
            self.apply(checkpoint_events.observed(self.state, present, new, restores))

    def node_gone(self, index: int, returncode: int | None = None) -> None:
        """The node is over: its host said so, or its channel closed (exited, killed, crashed)."""
        returncode, where = self.nodes[index].gone(returncode)
        with self.lock:
            self.gate.open_if_ready()
            self.logs.retire(index)
            was_live = self.state.nodes[index].status.live
            self.apply(rules.node_gone(self.state, index, returncode, time.time(), where))
            if was_live and self.state.nodes[index].status == NodeStatus.LOST:
                self.restart_survivors(index)

    def node_silent(self, index: int, silent_for: float) -> None:
        """The node sent nothing for its liveness timeout: lost; the others re-form first,
        then it is fenced (its channel's end, when it comes, changes nothing more)."""
        with self.lock:
            events = rules.node_silent(self.state, index, silent_for, time.time())
            if not events:
                return
            self.apply(events)
            self.restart_survivors(index)
        self.nodes[index].fence()

    def protocol_error(self, index: int, error: ProtocolError) -> None:
        """A node broke the protocol: an agent error for it; a joined node is dropped."""
        node = self.nodes[index]
        with self.lock:
            self.apply(rules.agent_error(self.state, index,
                                         f"node {index} sent a bad message: {error}",
                                         time.time(), drop=node.drop_on_protocol_error))
            if node.drop_on_protocol_error:
                self.restart_survivors(index)
        if node.drop_on_protocol_error:
            node.wire.shutdown()

    def node_leaving(self, index: int, reason: str) -> None:
        """Node ``index`` leaves on its scheduler's warning: the others re-form without it now
        (a membership restart: no budget spent), then it is stopped (it waits for that, so that
        its ranks do not vanish under the others' collectives first)."""
        with self.lock:
            events = scheduling.node_leaving(self.state, index, reason, time.time())
            self.apply(events)
            if events:
                self.restart_survivors(index)
        self.nodes[index].send(Stop(run_id=self.run_id))

    def stalled(self, report: HangReport | None) -> None:
        """The hang watch saw no progress (``report`` says where), or progress again (None)."""
        with self.lock:
            self.apply(rules.stalled(
                self.state, None if report is None else report.answer,
                [] if report is None else report.suspects,
                0 if report is None else report.attempt, time.time()))

    def worker_failed(self, index: int, report: WorkerFailed) -> None:
        """Node ``index``'s ranks failed; held failures that now follow torch's policy are
        released (``model.losses``: a node of their world failed on its own)."""
        with self.lock:
            self.apply(rules.apply(self.state, index, report, time.time()))
            released = rules.release_held(self.state, index, report)
        for node in released:
            self.nodes[node].send(Restart(reason="failure"))

    def restart_survivors(self, lost: int) -> None:
        """Node ``lost`` is gone: the others re-form the world now (a membership restart)."""
        for index in rules.survivors(self.state, lost):
            self.nodes[index].send(Restart(reason="membership"))

    def stopping_nodes(self) -> list[int]:
        """Nodes the state says to stop whose agents are still there."""
        return [i for i, n in self.state.nodes.items() if n.stopping and not n.gone]

    def stop_nodes(self, nodes: list[int]) -> None:
        """Ask nodes to stop; end a local one that does not, let go of a remote one."""
        grace = self.plan.options.shutdown_timeout + 2
        for index in nodes:
            self.nodes[index].send(Stop(run_id=self.run_id))
        deadline = time.monotonic() + grace
        with self.changed:
            while (any(not self.state.nodes[i].gone for i in nodes)
                   and time.monotonic() < deadline):
                self.changed.wait(0.1)
            stuck = [i for i in nodes if not self.state.nodes[i].gone]
        for index in stuck:
            self.nodes[index].abandon()

    def stop_in_background(self, nodes: list[int]) -> None:
        """``stop_nodes`` off the calling thread (the pump must not wait for its own nodes)."""
        if nodes:
            def stop_them() -> None:
                self.stop_nodes(nodes)
                self.wake()

            threading.Thread(target=stop_them, name="elastic_nb-stop", daemon=True).start()

    def _stop_remaining_nodes(self) -> None:
        """A failed job ends promptly: stop the nodes still running."""
        self.stop_in_background(self.stopping_nodes())

    def _end_exit_barrier_waits(self) -> None:
        """Every node reported success: an agent still there after a grace waits in torch's
        exit barrier for a peer that was lost, and is stopped instead of waiting it out."""
        def end_them() -> None:
            deadline = time.monotonic() + EXIT_BARRIER_GRACE
            while True:
                with self.lock:
                    left = [i for i, n in self.state.nodes.items() if not n.gone]
                if not left:
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.stop_nodes(left)
            self.wake()

        threading.Thread(target=end_them, name="elastic_nb-exit-barrier", daemon=True).start()
