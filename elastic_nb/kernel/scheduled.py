"""Nodes the notebook starts elsewhere: submitted through a launcher, queued, then joined.

``ScheduledNode`` is the node handle of a Slurm or SSH node. It is in the
job's state from its reservation on (``reserve``: its index, ``queued``, no
channel), then ``submit``-ted to its launcher off the job's lock (a busy
slurmctld takes seconds and the job goes on meanwhile); its launcher's
``Launch`` says what the scheduler does with it. Once its host joins with the
ticket it was given (``JoinDesk``), ``attach`` gives it its channel and it
acts as any joined node; killing it goes through its launcher too
(``scancel``; ssh), and when the job ends nothing of it is left.

``SchedulerWatch`` is one job's thread that polls the launches, all of a kind
at once (one ``squeue``), and turns what it sees into events
(``model.scheduling``): queued and why, started where, ended and why (a node
that ends before it joined is lost). It looks at a node until its scheduler
says it is over for good (``COMPLETING`` is not: Slurm is still ending it),
even once it joined, was lost or was cancelled, so that the timeline names
how it ended; when the job is over it cancels what is left (one ``scancel``)
and takes one last look at what had not settled. A scheduler that does not
answer is asked again; nothing of it runs under the job's lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.launchers import Launch, NodeCommand, launcher_for
from elastic_nb.kernel.nodes import JoinedNode
from elastic_nb.model import scheduling
from elastic_nb.model.placement import Placement
from elastic_nb.model.plan import NodePlan
from elastic_nb.model.scheduling import SchedulerStatus
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.commands import Kill

POLL_INTERVAL = 1.0  # seconds between two looks at the scheduler


class ScheduledNode(JoinedNode):
    """A node a launcher started (Slurm, ssh): queued until it joins, then a joined node.

    ``reserve`` it (under the job's lock), ``submit`` it (off the lock);
    ``attach`` its channel when it joins; ``kill`` (through the channel and its
    launcher), ``abandon`` and ``fence`` also end its launch; ``cancel`` ends
    whatever is left of it, at once or as soon as its launcher took it;
    ``payload`` is what it runs (sent signed on join).
    """

    def __init__(self, index: int, node_plan: NodePlan, command: NodeCommand) -> None:
        assert node_plan.on is not None
        super().__init__(index, None, node_plan.on.describe())
        self.on: Placement = node_plan.on
        self.command = command
        self.launch: Launch | None = None  # until its launcher took it
        self.payload = node_plan.payload
        self.remote_pid = 0
        self.settled = False  # its scheduler said it is over for good
        self.cancelled = False  # this job ended its launch (cancel)
        self._submitting = threading.Lock()

    @classmethod
    def reserve(cls, core: JobCore, index: int, node_plan: NodePlan,
                job_address: str) -> ScheduledNode:
        """Node ``index`` to start through its placement's launcher (``submit``)."""
        plan = core.plan
        args = ["--backend", plan.backend, "--endpoint", core.endpoint, "--run-id", plan.run_id,
                "--nproc", str(node_plan.nproc), "--role", node_plan.role,
                "--job-address", job_address, "--ticket", str(index),
                "--timeout", str(int(plan.options.rdzv_timeout))]
        command = NodeCommand(index, plan.run_id, tuple(args), core.key,
                              os.path.join(plan.log_dir, f"node_{index}"),
                              {k: str(v) for k, v in plan.options.rdzv_configs.items()})
        return cls(index, node_plan, command)

    def submit(self) -> Launch:
        """Hand it to its launcher (never under the job's lock); LaunchError if refused. A node
        cancelled meanwhile is cancelled as soon as it is submitted."""
        launch = launcher_for(self.on).start(self.command)
        with self._submitting:
            self.launch = launch
            cancelled = self.cancelled
        if cancelled:
            launch.cancel(self.remote_pid)
        return launch

    def attach(self, channel: Channel, host: str, pid: int) -> None:
        self.channel, self.host, self.remote_pid = channel, host, pid

    def kill(self) -> None:
        reached = self.send(Kill())
        if self.launch is None:
            self.cancel()
        else:
            self.launch.kill(self.remote_pid, reached)

    def abandon(self) -> None:
        super().abandon()
        self.cancel()

    def fence(self) -> None:
        super().fence()
        threading.Thread(target=self.cancel, name="elastic_nb-fence", daemon=True).start()

    def cancel(self) -> None:
        launch = self.claim_cancel()
        if launch is not None:
            launch.cancel(self.remote_pid)

    def claim_cancel(self) -> Launch | None:
        """Mark it cancelled; its launch if it has one still to end."""
        with self._submitting:
            if self.cancelled or self.settled:
                return None
            self.cancelled = True
            return self.launch

    def gone(self, returncode: int | None) -> tuple[int | None, str]:
        assert self.launch is not None  # it joined
        return returncode, f"on {self.host} ({self.launch.name}; see {self.launch.output()})"


class SchedulerWatch:
    """Polls the launches of one job's scheduled nodes (see the module's docstring)."""

    def __init__(self, core: JobCore) -> None:
        self._core = core
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name=f"elastic_nb-{core.run_id}-scheduler")

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def cancel_all(self) -> None:
        """End every launch of the job that is not over (``stop()``; the job's end), one call
        per kind, then look at each once more: the timeline names how it ended."""
        # one still being submitted is marked: it is cancelled once its launcher returns it
        claimed = [node for node in self._unsettled(submitted=False)
                   if node.claim_cancel() is not None]
        for kind, of_kind in _by_kind(claimed).items():
            kind.cancel_all([(node.launch, node.remote_pid) for node in of_kind if node.launch])
        self._look(self._unsettled())

    def _unsettled(self, submitted: bool = True) -> list[ScheduledNode]:
        with self._core.lock:
            return [n for n in self._core.nodes.values() if isinstance(n, ScheduledNode)
                    and not n.settled and (n.launch is not None or not submitted)]

    def _watch(self) -> None:
        while True:
            stopped = self._stop.wait(POLL_INTERVAL)
            with self._core.lock:
                done = self._core.state.done
            if done:  # whatever is left of the job's launches goes with it
                self.cancel_all()
                return
            if stopped:
                return
            self._look(self._unsettled())

    def _look(self, nodes: list[ScheduledNode]) -> None:
        """Ask each kind's scheduler once about these nodes; record what changed."""
        for kind, of_kind in _by_kind(nodes).items():
            statuses = kind.poll_all([node.launch for node in of_kind if node.launch])
            for node, status in zip(of_kind, statuses, strict=True):
                if status is not None:
                    self._seen(node, status)

    def _seen(self, node: ScheduledNode, status: SchedulerStatus) -> None:
        core, launch = self._core, node.launch
        assert launch is not None
        with core.lock:
            events = scheduling.scheduler_changed(core.state, node.index, status, launch.name,
                                                  time.time())
            if status.ended:
                node.settled = True
                why = (f"{launch.name} ended before it joined: {status.state}"
                       + (f" ({status.reason})" if status.reason else "")
                       + f"; see {_output_hint(launch.output())}")
                events += scheduling.never_joined(core.state, node.index, why, time.time())
            core.apply(events)
        if status.ended:
            launch.settled()


def _by_kind(nodes: list[ScheduledNode]) -> dict[type[Launch], list[ScheduledNode]]:
    kinds: dict[type[Launch], list[ScheduledNode]] = defaultdict(list)
    for node in nodes:
        if node.launch is not None:
            kinds[type(node.launch)].append(node)
    return kinds


def _output_hint(output: str) -> str:
    """Where its messages are; if its scheduler never wrote them, why that may be."""
    if os.path.exists(output):
        return output
    return (f"{output}, which was never written: if the node's machine cannot write there, "
            "give its placement a directory on shared storage (Slurm(output_dir=...))")
