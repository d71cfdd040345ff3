"""Starting each node where its plan says: a host on this machine, or a launch elsewhere.

``NodeStarter`` is the one place that reads a node's placement: a node for
this machine gets a ``LocalNode`` (warm from the pool or a new host), one
``on=Slurm(...)``/``SSH(...)`` a ``ScheduledNode`` submitted through its
launcher, watched by the job's ``SchedulerWatch`` until it joins. Everything
after that goes through the node handle's contract.
"""

from __future__ import annotations

import time

from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.nodes import LocalNode, NodeHandle
from elastic_nb.kernel.pump import Pump
from elastic_nb.kernel.scheduled import ScheduledNode, SchedulerWatch
from elastic_nb.model import controls, rules, scheduling
from elastic_nb.model.plan import NodePlan


class NodeStarter:
    """``start`` one node (its events recorded), ``submit_all`` the scheduled nodes of a launch
    first (a refusal leaves nothing started), ``cancel_all`` and ``stop`` the watch."""

    def __init__(self, core: JobCore, pump: Pump, job_address: str) -> None:
        self._core = core
        self._pump = pump
        self._job_address = job_address
        self._watch = SchedulerWatch(core)

    def submit_all(self, plans: dict[int, NodePlan]) -> None:
        """Submit these nodes, all or none: if one is refused, those before are cancelled."""
        submitted: list[ScheduledNode] = []
        try:
            for index, node_plan in plans.items():
                submitted.append(self._submit(index, node_plan))
        except BaseException:
            for node in submitted:
                node.cancel()
            raise

    def start(self, index: int, node_plan: NodePlan, added: bool = False) -> NodeHandle:
        """Start node ``index`` (``added``: by ``add_node``, after the launch) and record it."""
        if node_plan.on is not None:
            return self._submit(index, node_plan)
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

    def _submit(self, index: int, node_plan: NodePlan) -> ScheduledNode:
        core = self._core
        assert node_plan.on is not None
        node = ScheduledNode.submit(core, index, node_plan, self._job_address, node_plan.on)
        core.apply(scheduling.node_submitted(core.state, index, node_plan.nproc, node_plan.role,
                                             node_plan.on.describe(), node.launch.name,
                                             time.time()))
        core.nodes[index] = node
        core.placements.append(node_plan.on)
        self._watch.start()
        return node

    def cancel_all(self) -> None:
        self._watch.cancel_all()

    def stop(self) -> None:
        self._watch.stop()
