"""Nodes the notebook starts elsewhere: submitted through a launcher, queued, then joined.

``ScheduledNode`` is the node handle of a Slurm or SSH node. From its
submission (``submit``) it is in the job's state, ``queued``, with no channel;
its launcher's ``Launch`` says what the scheduler does with it. Once its
host joins with the ticket it was given (``JoinDesk``), ``attach`` gives it
its channel and it acts as any joined node; killing it goes through its
launcher too (``scancel``; ssh), and when the job ends nothing of it is left.

``SchedulerWatch`` is one job's thread that polls every launch and turns
what it sees into events (``model.scheduling``): queued and why, started
where, ended and why (a node that ends before it joined is lost). It looks
at a node until its scheduler says it is over for good (``COMPLETING`` is
not: Slurm is still ending it), even once it joined, was lost or was
cancelled, so that the timeline names how it ended; when the job is over
it cancels what is left and takes one last look at what had not settled.
"""

from __future__ import annotations

import os
import threading
import time

from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.launchers import Launch, NodeCommand, launcher_for
from elastic_nb.kernel.nodes import JoinedNode
from elastic_nb.model import scheduling
from elastic_nb.model.placement import Placement
from elastic_nb.model.plan import NodePlan
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.commands import Kill

POLL_INTERVAL = 1.0  # seconds between two looks at the scheduler


class ScheduledNode(JoinedNode):
    """A node a launcher started (Slurm, ssh): queued until it joins, then a joined node.

    ``attach`` its channel when it joins; ``kill`` (through the channel and its
    launcher), ``abandon`` and ``fence`` also end its launch; ``cancel`` ends
    whatever is left of it; ``payload`` is what it runs (sent signed on join).
    """

    def __init__(self, index: int, node_plan: NodePlan, launch: Launch) -> None:
        super().__init__(index, None, node_plan.on.describe() if node_plan.on else "?")
        self.launch = launch
        self.payload = node_plan.payload
        self.remote_pid = 0
        self.settled = False  # its scheduler said it is over for good
        self.cancelled = False  # this job ended its launch (cancel)

    @classmethod
    def submit(cls, core: JobCore, index: int, node_plan: NodePlan, job_address: str,
               on: Placement) -> ScheduledNode:
        """Start node ``index`` through its placement's launcher; LaunchError if refused."""
        plan = core.plan
        args = ["--backend", plan.backend, "--endpoint", core.endpoint, "--run-id", plan.run_id,
                "--nproc", str(node_plan.nproc), "--role", node_plan.role,
                "--job-address", job_address, "--ticket", str(index),
                "--timeout", str(int(plan.options.rdzv_timeout))]
        command = NodeCommand(index, plan.run_id, tuple(args), core.key,
                              os.path.join(plan.log_dir, f"node_{index}"),
                              {k: str(v) for k, v in plan.options.rdzv_configs.items()})
        return cls(index, node_plan, launcher_for(on).start(command))

    def attach(self, channel: Channel, host: str, pid: int) -> None:
        self.channel, self.host, self.remote_pid = channel, host, pid

    def kill(self) -> None:
        reached = self.send(Kill())
        self.launch.kill(self.remote_pid, reached)

    def abandon(self) -> None:
        super().abandon()
        self.cancel()

    def fence(self) -> None:
        super().fence()
        threading.Thread(target=self.cancel, name="elastic_nb-fence", daemon=True).start()

    def cancel(self) -> None:
        if not (self.cancelled or self.settled):
            self.cancelled = True
            self.launch.cancel(self.remote_pid)

    def gone(self, returncode: int | None) -> tuple[int | None, str]:
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
        """End every launch of the job that is not over (``stop()``; the job's end), then look
        at each once more: the timeline names how it ended."""
        for node in self._unsettled():
            node.cancel()
        for node in self._unsettled():
            self._look(node)

    def _unsettled(self) -> list[ScheduledNode]:
        return [node for node in self._scheduled() if not node.settled]

    def _scheduled(self) -> list[ScheduledNode]:
        with self._core.lock:
            return [n for n in self._core.nodes.values() if isinstance(n, ScheduledNode)]

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
            for node in self._unsettled():
                self._look(node)

    def _look(self, node: ScheduledNode) -> None:
        status = node.launch.poll()
        core = self._core
        with core.lock:
            events = scheduling.scheduler_changed(core.state, node.index, status,
                                                  node.launch.name, time.time())
            if status.ended:
                node.settled = True
                why = (f"{node.launch.name} ended before it joined: {status.state}"
                       + (f" ({status.reason})" if status.reason else "")
                       + f"; see {node.launch.output()}")
                events += scheduling.never_joined(core.state, node.index, why, time.time())
            core.apply(events)
