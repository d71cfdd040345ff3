"""Starting each node where its plan says: a host on this machine, or a launch elsewhere.

``NodeStarter`` is the one place that reads a node's placement: a node for
this machine gets a ``LocalNode`` (warm from the pool or a new host), one
``on=Slurm(...)``/``SSH(...)`` a ``ScheduledNode``, reserved under the job's
lock and ``submit``-ted through its launcher off it, watched by the job's
``SchedulerWatch`` until it joins. Everything after that goes through the
node handle's contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.nodes import LocalNode, NodeHandle
from elastic_nb.kernel.pump import Pump
from elastic_nb.kernel.scheduled import ScheduledNode, SchedulerWatch
from elastic_nb.model import controls, rules, scheduling
from elastic_nb.model.plan import NodePlan


class NodeStarter:
    """``start`` one node (its events recorded; a scheduled one reserved), ``submit_reserved``
    (a refusal leaves none of them started), ``cancel_all`` and ``stop`` the watch."""

    def __init__(self, core: JobCore, pump: Pump, job_address: str,
                 wait_published: Callable[[float], None]) -> None:
        self._core = core
        self._pump = pump
        self._job_address = job_address
        self._wait_published = wait_published
        self._watch = SchedulerWatch(core)
        self._reserved: list[ScheduledNode] = []

    def submit_reserved(self) -> None:
        """Hand the reserved nodes to their launchers, all or none, once the job's descriptor
        is published, without holding the job's lock (sbatch on a busy cluster takes
        seconds); if one is refused (LaunchError), those before are cancelled and each is
        recorded as never started."""
        core = self._core
        with core.lock:
            nodes, self._reserved = self._reserved, []
        if not nodes:
            return
        self._wait_published(core.plan.options.rdzv_timeout)
        submitted: list[ScheduledNode] = []
        try:
            for node in nodes:
                launch = node.submit()
                with core.lock:
                    core.apply(scheduling.node_submitted(core.state, node.index, launch.name,
                                                         time.time()))
                submitted.append(node)
                self._watch.start()
        except BaseException as exc:
            for node in submitted:
                node.cancel()
            with core.lock:
                for node in nodes:
                    core.apply(scheduling.never_joined(core.state, node.index,
                                                       f"not submitted: {exc}", time.time()))
            raise

    def start(self, index: int, node_plan: NodePlan, added: bool = False) -> NodeHandle:
        """Start node ``index`` (``added``: by ``add_node``, after the launch) and record it;
        under the job's lock. A node elsewhere is only reserved: ``submit`` it after, off the
        lock."""
        if node_plan.on is not None:
            return self._reserve(index, node_plan)
        core, now = self._core, time.time()
        if added:
            core.apply(controls.node_added(core.state, index, node_plan.nproc, node_plan.role,
                                           local=True, host="localhost", now=now))
        else:
            rules.add_node(core.state, index, node_plan.nproc, node_plan.role, local=True)
        # after this job's hosts: nodes keep their order in torch's ranks (by agent pid)
        above = max((n.host_pid or 0 for n in core.state.nodes.values()), default=0)
        local = LocalNode.start(core.plan, index, node_plan.nproc, node_plan.role,
                                node_plan.payload, core.endpoint, above, core.key)
        rules.host_assigned(core.state, index, local.pid, local.warm)
        core.nodes[index] = local
        self._pump.watch(local)
        return local

    def _reserve(self, index: int, node_plan: NodePlan) -> ScheduledNode:
        core = self._core
        assert node_plan.on is not None
        node = ScheduledNode.reserve(core, index, node_plan, self._job_address)
        core.apply(scheduling.node_submitting(core.state, index, node_plan.nproc, node_plan.role,
                                              node_plan.on.describe(), time.time()))
        core.nodes[index] = node
        core.placements.append(node_plan.on)
        self._reserved.append(node)
        return node

    def cancel_all(self) -> None:
        self._watch.cancel_all()

    def stop(self) -> None:
        self._watch.stop()
