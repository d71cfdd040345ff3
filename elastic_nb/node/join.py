"""Join a running job from another terminal or machine: ``python -m elastic_nb join``.

The node finds the job through the rendezvous (the descriptor the Job
published: the packed function, the options, the Job's address and a join
token), introduces itself to the Job, then runs as an ordinary elastic agent
whose workers print to this terminal with prefixes and whose reports (ranks,
failures, results) reach the notebook's Job.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import replace

from elastic_nb.node.host import run_node
from elastic_nb.rendezvous import discovery, network, register_backends
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.config import AgentConfig
from elastic_nb.wire.join import JoinRejected, JoinRequest, parse_reply
from elastic_nb.wire.records import ProtocolError


class JoinError(RuntimeError):
    """The job could not be found or refused this node."""


def join(backend: str, endpoint: str, run_id: str, nproc: int, role: str = "default",
         local_addr: str | None = None, log_dir: str | None = None,
         rdzv_configs: dict[str, str] | None = None, timeout: float = 60) -> int:
    """Run one node of job ``run_id`` here; the agent's exit code.

    ``local_addr`` is the address peers reach this host at; its interface
    carries the ranks' gloo/NCCL traffic unless GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME are set.
    """
    try:
        os.environ.update(network.socket_env(local_addr, os.environ))
    except ValueError as exc:
        raise JoinError(f"--local-addr: {exc}") from None
    register_backends()
    rdzv_configs = dict(rdzv_configs or {})
    try:
        store = discovery.open_store(backend, endpoint, run_id, rdzv_configs, timeout)
        descriptor = discovery.lookup(store, run_id)
    except Exception as exc:
        raise JoinError(f"no job {run_id!r} found through the {backend} rendezvous at "
                        f"{endpoint} within {timeout} s: {exc}") from exc
    host, port = descriptor.job_address.rsplit(":", 1)
    try:
        connection = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise JoinError(f"job {run_id} accepts nodes at {host}:{port}, which is not reachable "
                        f"from here ({exc}); launch it with listen_addr set to an address "
                        "this machine can reach") from exc
    connection.settimeout(None)
    channel = Channel(connection)
    channel.send(JoinRequest(token=descriptor.token, nproc=nproc, role=role,
                             host=socket.gethostname()))
    message = channel.receive()
    try:
        reply = parse_reply(message) if message is not None else None
    except ProtocolError as exc:
        raise JoinError(f"job {run_id} answered with something else: {exc}") from None
    if reply is None or isinstance(reply, JoinRejected):
        reason = reply.reason if reply else "the job closed the connection"
        raise JoinError(f"job {run_id} refused this node: {reason}")
    shared = descriptor.options
    # this machine's client settings (TLS, auth) win
    options = replace(shared, rdzv_configs={**shared.rdzv_configs, **rdzv_configs})
    config = AgentConfig(
        node=reply.node, role=role, nproc=nproc,
        payload=descriptor.payload, run_id=run_id, backend=backend,
        endpoint=endpoint, options=options,
        log_dir=log_dir or tempfile.mkdtemp(prefix=f"elastic_nb-{run_id}-"),
        local_addr=local_addr, tee=True)
    print(f"joined job {run_id} as node {config.node} ({nproc} x {role}); logs in {config.log_dir}",
          flush=True)
    return run_node(config, channel)
