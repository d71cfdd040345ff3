"""How a node on another machine finds a job: a join descriptor in the rendezvous store.

The Job writes one key per run (``elastic_nb/<run_id>/job``) into the same store the
rendezvous uses: the packed function call, the job's options, the address
where the Job accepts nodes, and a join token. ``python -m elastic_nb join``
reads it back. The descriptor is signed with the job's key (``wire.auth``):
a node that has the key (every node the notebook starts, and one joined with
``--key-file``) runs nothing that someone else wrote there. A node joined
without the key trusts the store: whoever can write it could run code on
that node, so protect the rendezvous (etcd auth and TLS, a c10d port that
only the cluster can reach) or pass the key.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

from elastic_nb.wire.join import JoinDescriptor


def open_store(backend: str, endpoint: str, run_id: str, rdzv_configs: dict[str, Any],
               timeout: float) -> dist.Store:
    """A client of the store the rendezvous of ``run_id`` uses."""
    params = RendezvousParameters(backend=backend, endpoint=endpoint, run_id=run_id,
                                  min_nodes=1, max_nodes=1, read_timeout=int(timeout),
                                  connect_timeout=int(timeout), **rdzv_configs)
    if backend == "c10d":
        host, port = parse_rendezvous_endpoint(endpoint, default_port=29400)
        return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))
    if backend == "etcd3":
        from elastic_nb.rendezvous.etcd3 import create_etcd3_backend

        return create_etcd3_backend(params)[1]
    from torch.distributed.elastic.rendezvous.etcd_rendezvous_backend import create_backend

    store = create_backend(params)[1]
    store.set_timeout(timedelta(seconds=timeout))  # torch's EtcdStore waits 300 s otherwise
    return store


def _key(run_id: str) -> str:
    return f"elastic_nb/{run_id}/job"


def publish(store: dist.Store, run_id: str, descriptor: JoinDescriptor, key: str) -> None:
    store.set(_key(run_id), descriptor.to_json(key))


def lookup(store: dist.Store, run_id: str, key: str | None = None) -> JoinDescriptor:
    """The job's descriptor; waits up to the store's timeout for the job to publish it.
    ProtocolError if what is there is not one, or (with ``key``) not one the job signed."""
    return JoinDescriptor.from_json(store.get(_key(run_id)), key)
