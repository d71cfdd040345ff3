"""elastic_nb: run, watch and break PyTorch elastic jobs from a Jupyter notebook.

    import elastic_nb as enb
    job = enb.launch(train, nproc=4)      # returns at once
    job.result()                          # {rank: return value}
    enb.report(step, loss=loss.item())    # in a rank: job.metrics, the plot, job.goodput()
    start = enb.restore_checkpoint(state) # in a rank: resume; enb.save_checkpoint(step, state)
    enb.launch(train, nodes=[enb.Node(4), enb.Node(4, on=enb.Slurm(partition="gpu"))],
               listen_addr="10.0.0.5")    # a node through Slurm (or enb.SSH("user@host"))

The engine is torch.distributed.elastic itself: one real LocalElasticAgent
process per node, real rendezvous (c10d by default), real worker processes.
The package's folders say which process runs a file: ``model`` (pure, no
I/O), ``wire`` (what crosses a process boundary), ``kernel`` (the notebook's
process), ``node`` (a node host), ``worker`` (a rank), ``ui`` (the dashboard
and magics), ``rendezvous`` (stores and backends), ``compat`` (third-party
private names).
"""

from typing import Any

from elastic_nb.kernel.host_pool import HostInfo, hosts, set_keep_warm, shutdown
from elastic_nb.kernel.job import Job
from elastic_nb.kernel.launch import launch, run
from elastic_nb.kernel.places import register as register_place
from elastic_nb.model.errors import JobFailed, LaunchError, RankFailure
from elastic_nb.model.placement import SSH, Slurm
from elastic_nb.model.plan import Node
from elastic_nb.model.snapshot import JobSnapshot
from elastic_nb.model.state import Event, EventKind, JobStatus, NodeStatus, WorkerInfo, WorkerStatus
from elastic_nb.rendezvous.etcd_server import EtcdServer
from elastic_nb.wire.options import BACKENDS
from elastic_nb.worker.checkpoint import (
    CheckpointError,
    checkpoint_world,
    restore_checkpoint,
    save_checkpoint,
)
from elastic_nb.worker.metrics import report

__all__ = [
    "BACKENDS",
    "SSH",
    "CheckpointError",
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
    "Slurm",
    "WorkerInfo",
    "WorkerStatus",
    "checkpoint_world",
    "hosts",
    "launch",
    "register_place",
    "report",
    "restore_checkpoint",
    "run",
    "save_checkpoint",
    "set_keep_warm",
    "shutdown",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext elastic_nb``: the ``%elastic_run`` / ``%%elastic_run`` and ``%torchrun`` magics."""
    from elastic_nb.ui.magics import load_ipython_extension as load

    load(ipython)
