"""elastic_nb: run, watch and break PyTorch elastic jobs from a Jupyter notebook.

    import elastic_nb as enb
    job = enb.launch(train, nproc=4)      # returns at once
    job.result()                          # {rank: return value}

The engine is torch.distributed.elastic itself: one real LocalElasticAgent
process per node, real rendezvous (c10d by default), real worker processes.
"""

from typing import Any

from elastic_nb.api import launch, run
from elastic_nb.errors import JobFailed, LaunchError, RankFailure
from elastic_nb.host_pool import HostInfo, hosts, set_keep_warm, shutdown
from elastic_nb.job import Job
from elastic_nb.plan import BACKENDS, Node
from elastic_nb.rendezvous.etcd_server import EtcdServer
from elastic_nb.snapshot import JobSnapshot
from elastic_nb.state import Event, EventKind, JobStatus, NodeStatus, WorkerInfo, WorkerStatus

__all__ = [
    "BACKENDS",
    "EtcdServer",
    "Event",
    "EventKind",
    "HostInfo",
    "Job",
    "JobFailed",
    "JobSnapshot",
    "JobStatus",
    "LaunchError",
    "Node",
    "NodeStatus",
    "RankFailure",
    "WorkerInfo",
    "WorkerStatus",
    "hosts",
    "launch",
    "run",
    "set_keep_warm",
    "shutdown",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext elastic_nb``: the ``%elastic_run`` / ``%%elastic_run`` magics."""
    from elastic_nb.magics import load_ipython_extension as load

    load(ipython)
