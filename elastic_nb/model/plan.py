"""What was asked: the nodes a user describes, and the frozen plan a launch makes of them.

``kernel.planning.make_plan`` checks ``launch()``'s arguments and builds a
``JobPlan``; a plan never changes after launch: what the job became (nodes
killed, nodes joined, restarts) is observed state (``model.state``), kept
apart from what was planned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elastic_nb.model.placement import Placement
from elastic_nb.wire.options import JobOptions


@dataclass
class Node:
    """One machine of the job: an agent process running ``nproc`` workers of one role.

    ``fn``, ``args`` and ``kwargs`` default to the ones given to ``launch``;
    ``fn`` may be a script's path, or with ``module`` a module's name, as in
    ``launch``.
    ``on`` says where it runs: this machine (None, the default), ``Slurm(...)``
    or ``SSH("user@host")`` (``model.placement``).
    """

    nproc: int
    role: str = "default"
    fn: Callable[..., Any] | str | None = None
    args: tuple = ()
    kwargs: dict[str, Any] | None = None
    on: Placement | None = None
    module: bool = False


@dataclass(frozen=True)
class NodePlan:
    """What one node runs: the packed call, its role and size."""

    nproc: int
    role: str
    payload: bytes = field(repr=False)
    on: Placement | None = None  # None: this machine


@dataclass(frozen=True)
class JobPlan:
    """A validated launch: everything needed to start the nodes, frozen at launch.

    ``default_payload`` is the job's function call, packed: what an added or
    joining node runs when it brings no function of its own. The user's
    function and arguments are not kept (only their pickle is).
    """

    run_id: str
    backend: str
    endpoint: str | None  # None: the embedded c10d store, hosted by the Job
    nodes: tuple[NodePlan, ...]
    options: JobOptions
    log_dir: str
    env: dict[str, str]
    listen_addr: str = "127.0.0.1"
    default_payload: bytes | None = field(default=None, repr=False)
    keep_warm: float = 0.0  # seconds a local host stays idle for the next launch (0: it ends)

    @property
    def world_size(self) -> int:
        """Ranks of the nodes planned at launch (what the first rendezvous forms)."""
        return sum(n.nproc for n in self.nodes)
