"""Join a running job from another terminal or machine: ``python -m elastic_nb join``.

The node finds the job through the rendezvous (the descriptor the Job
published: the packed function, the options, the Job's address and a join
token), introduces itself to the Job, then runs as an ordinary elastic agent
whose workers print to this terminal with prefixes and whose reports (ranks,
failures, results) reach the notebook's Job.

A node the notebook started (Slurm, ssh) is given the Job's address, its
ticket (the node index reserved for it) and the job's key through a private
path; it runs only a descriptor and an answer signed with that key, and
tells the Job when it refuses one. The Job published its descriptor and
listens before it submits such a node, so one that cannot reach the Job or
find its descriptor within seconds gives up (its kernel died while it was
queued): it exits non-zero and frees its allocation. On its scheduler's
warning signal it leaves the job gracefully (``Leaving``).
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from dataclasses import replace
from types import FrameType

from elastic_nb.node.host import NodeHost
from elastic_nb.rendezvous import discovery, network, register_backends
from elastic_nb.wire import auth
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.config import AgentConfig
from elastic_nb.wire.join import (
    JoinAccepted,
    JoinDescriptor,
    JoinRejected,
    JoinRequest,
    parse_challenge,
    parse_reply,
)
from elastic_nb.wire.records import ProtocolError

GIVE_UP_AFTER = 5.0  # seconds a node the Job started tries to reach it and find its descriptor


class JoinError(RuntimeError):
    """The job could not be found or refused this node, or this node refused the job."""


def join(backend: str, endpoint: str, run_id: str, nproc: int, role: str = "default",
         local_addr: str | None = None, log_dir: str | None = None,
         rdzv_configs: dict[str, str] | None = None, timeout: float = 60,
         key: str | None = None, job_address: str | None = None, ticket: int = -1,
         leave_on: str | None = None) -> int:
    """Run one node of job ``run_id`` here; the agent's exit code.

    ``local_addr`` is the address peers reach this host at (default, given
    ``job_address``: the one on the interface that reaches the Job); its
    interface carries the ranks' gloo/NCCL traffic unless GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME are set. With ``key`` the node runs only what the job
    signed; ``leave_on`` names the signal on which it leaves gracefully.
    """
    if local_addr is None and job_address is not None:
        try:
            local_addr = network.address_towards(job_address.rsplit(":", 1)[0])
        except OSError as exc:
            raise JoinError(f"no route from here to the job at {job_address}: {exc}") from None
    try:
        os.environ.update(network.socket_env(local_addr, os.environ))
    except ValueError as exc:
        raise JoinError(f"--local-addr: {exc}") from None
    register_backends()
    rdzv_configs = dict(rdzv_configs or {})
    if job_address is not None:  # started by the Job: it is there already, or gone for good
        _reach(job_address, run_id)
    descriptor, refused = _find(backend, endpoint, run_id, rdzv_configs,
                                timeout if job_address is None else min(timeout, GIVE_UP_AFTER),
                                key, job_address is not None)
    address = job_address or (descriptor.job_address if descriptor else "")
    channel, reply = _introduce(address, run_id, timeout, key, JoinRequest(
        token=descriptor.token if descriptor else "", nproc=nproc, role=role,
        host=socket.gethostname(), ticket=ticket, nonce=auth.new_nonce() if key else "",
        refused=refused, pid=os.getpid()))
    assert descriptor is not None  # a refusal ends in _introduce
    # the job's rendezvous configs come in its signed answer (the store has none); this
    # machine's client settings (TLS, auth) win
    options = replace(descriptor.options, rdzv_configs={**reply.rdzv_configs, **rdzv_configs})
    config = AgentConfig(
        node=reply.node, role=role, nproc=nproc,
        payload=reply.payload or descriptor.payload, run_id=run_id, backend=backend,
        endpoint=endpoint, options=options,
        log_dir=log_dir or tempfile.mkdtemp(prefix=f"elastic_nb-{run_id}-"),
        local_addr=local_addr, tee=True, key=key)
    print(f"joined job {run_id} as node {config.node} ({nproc} x {role}); logs in {config.log_dir}",
          flush=True)
    host = NodeHost(channel, local=False)
    if leave_on is not None:
        def leave(signum: int, frame: FrameType | None) -> None:
            host.leave(f"{signal.Signals(signum).name}: its scheduler ends it soon "
                       "(time limit or preemption)")

        signal.signal(signal.Signals[leave_on], leave)
    return host.run(config)


def _reach(address: str, run_id: str) -> None:
    """Connect to the Job at ``address`` within ``GIVE_UP_AFTER`` seconds (a refusal is tried
    again: a busy kernel), then let go; JoinError if it is not there."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + GIVE_UP_AFTER
    while True:
        try:
            socket.create_connection((host, int(port)),
                                     timeout=max(deadline - time.monotonic(), 0.1)).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise JoinError(f"job {run_id} is not at {address} ({exc}): its kernel has ended "
                                f"(or this machine cannot reach it); nothing to join") from None
            time.sleep(0.5)


def _find(backend: str, endpoint: str, run_id: str, rdzv_configs: dict[str, str],
          timeout: float, key: str | None,
          can_report: bool) -> tuple[JoinDescriptor | None, str]:
    """The job's descriptor; or, for a node that knows the Job's address, None and why it was
    refused (the node tells the Job, then leaves)."""
    try:
        store = discovery.open_store(backend, endpoint, run_id, rdzv_configs, timeout)
        return discovery.lookup(store, run_id, key), ""
    except ProtocolError as exc:
        if not can_report:
            raise JoinError(f"refused to run job {run_id}: {exc}") from None
        return None, str(exc)
    except Exception as exc:
        raise JoinError(f"no job {run_id!r} found through the {backend} rendezvous at "
                        f"{endpoint} within {timeout} s: {exc}") from exc


def _introduce(address: str, run_id: str, timeout: float, key: str | None,
               request: JoinRequest) -> tuple[Channel, JoinAccepted]:
    """Connect to the Job and ask to join, answering its challenge; its (checked) answer.
    With the key, the channel is sealed from then on."""
    host, port = address.rsplit(":", 1)
    try:
        connection = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise JoinError(f"job {run_id} accepts nodes at {host}:{port}, which is not reachable "
                        f"from here ({exc}); launch it with listen_addr set to an address "
                        "this machine can reach") from exc
    channel = Channel(connection)
    try:
        challenge = parse_challenge(channel.receive()).nonce
    except (OSError, ProtocolError) as exc:
        channel.close()
        raise JoinError(f"job {run_id} at {address} did not open the handshake ({exc})") from None
    connection.settimeout(None)
    request = replace(request, challenge=challenge)
    channel.send(request, key)
    message = channel.receive()
    if request.refused:
        channel.close()
        raise JoinError(f"refused to run job {run_id}: {request.refused}")
    signed = message is not None and bool(message.get("mac"))
    try:
        if key is not None and message is not None and signed:
            message = auth.unseal(key, message, f"job {run_id}'s answer")
        reply = parse_reply(message) if message is not None else None
        if key is not None and isinstance(reply, JoinAccepted) and reply.nonce != request.nonce:
            raise ProtocolError(f"job {run_id}'s answer is not to this request")
    except ProtocolError as exc:
        raise JoinError(f"job {run_id} answered with something else: {exc}") from None
    if reply is None or isinstance(reply, JoinRejected):
        reason = reply.reason if reply else "the job closed the connection"
        raise JoinError(f"job {run_id} refused this node: {reason}")
    if key is not None and not signed:
        raise JoinError(f"job {run_id}'s answer is not signed with this job's key")
    if key is not None:
        channel.seal_frames(auth.FrameSeal(auth.session_key(key, challenge, request.nonce),
                                           sends="node"))
    return channel, reply
