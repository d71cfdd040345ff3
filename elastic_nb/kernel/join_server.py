"""Nodes from other machines: the descriptor, the listener, the join token and the handshakes.

The Job publishes a join descriptor (the packed call, the options, this
server's address and a token) in the rendezvous store; ``python -m elastic_nb
join`` reads it and connects here; the server opens with a challenge (a
nonce new to this connection) and the node sends one ``join`` message,
signed with the job's key over that challenge (by a node the job started,
which brings its ticket: the index reserved for it, see
``kernel.scheduled``; or one joined with ``--key-file``). A keyless
request, with the store's token alone, is admitted only under
``trust_store=True``. Each handshake runs on a thread of its own under a
deadline and a bound on how many run at once, so a peer that connects and
says nothing, trickles bytes or sends garbage costs a thread for a few
seconds, never the Job's pump nor the port. An accepted node's channel is
sealed (every frame signed with the session's key) and handed to the Job
(``admit``), which reads it from then on. ``JoinDesk`` is one job's: it
publishes the descriptor and admits each node as a ``JoinedNode``.
"""

from __future__ import annotations

import json
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.nodes import JoinedNode, NodeHandle
from elastic_nb.kernel.scheduled import ScheduledNode
from elastic_nb.model import controls, scheduling
from elastic_nb.model.errors import LaunchError
from elastic_nb.model.state import EventKind, NodeStatus
from elastic_nb.rendezvous import discovery
from elastic_nb.wire import auth
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.join import (
    JoinAccepted,
    JoinChallenge,
    JoinDescriptor,
    JoinRejected,
    JoinRequest,
    parse_request,
)
from elastic_nb.wire.records import ProtocolError, json_object

HANDSHAKE_TIMEOUT = 10.0
MAX_HANDSHAKE_BYTES = 64 << 10
MAX_HANDSHAKES = 32  # at once: a peer that opens connections by the thousand costs 32 threads


class JoinRefused(Exception):
    """The Job will not take this node; the message says why (sent to the node)."""


Admitted = tuple[JoinAccepted, Callable[[], None]]
Admit = Callable[[JoinRequest, Channel, bool], Admitted]
"""Called with a join request whose token or signature matched (``signed``: it was signed
with the job's key): the answer (the node's index) and what to do once it is sent (the
Job starts reading the channel); or JoinRefused."""


class JoinServer:
    """Accepts nodes that join from other machines, on ``listen_addr`` only.

    At most ``MAX_HANDSHAKES`` handshakes run at once (a connection beyond
    them is closed at once), and no one connection can end the accept loop.
    Without ``trust_store`` only a node that signs with the job's key is
    admitted; with it, a node that shows the store's token is too. A node that
    signed gets the job's ``rdzv_configs`` in the answer (they may hold secrets).
    """

    def __init__(self, listen_addr: str, admit: Admit, name: str, key: str,
                 trust_store: bool = False, rdzv_configs: dict[str, Any] | None = None,
                 handshake_timeout: float | None = None) -> None:
        self.token = secrets.token_hex(16)
        self._key = key
        self._trust_store = trust_store
        self._rdzv_configs = dict(rdzv_configs or {})
        self._admit = admit
        self._timeout = HANDSHAKE_TIMEOUT if handshake_timeout is None else handshake_timeout
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._listener = socket.create_server((listen_addr, 0))
        host, port = self._listener.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.getfqdn()
        self._address = f"{host}:{port}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-join",
                                        daemon=True)

    @property
    def address(self) -> str:
        """Where nodes from other machines connect (published in the rendezvous store)."""
        return self._address

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._listener.close()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._closed.is_set():
                try:
                    if not selector.select(0.2):
                        continue
                    connection, _ = self._listener.accept()
                except OSError:
                    continue
                self._begin(connection)

    def _begin(self, connection: socket.socket) -> None:
        """A handshake on a thread of its own, if fewer than MAX_HANDSHAKES run; else refused."""
        if not self._handshakes.acquire(blocking=False):
            connection.close()
            return
        try:
            threading.Thread(target=self._handshake, args=(connection,),
                             name="elastic_nb-handshake", daemon=True).start()
        except RuntimeError:  # no thread to be had now: this connection is refused, not the port
            self._handshakes.release()
            connection.close()

    def _handshake(self, connection: socket.socket) -> None:
        try:
            self._answer(connection)
        except Exception:  # whatever one peer did ends its connection only
            connection.close()
        finally:
            self._handshakes.release()

    def _answer(self, connection: socket.socket) -> None:
        """Challenge, then read one join request before the deadline; admit the node or refuse
        it. A node admitted on a signed request gets a sealed channel."""
        challenge = auth.new_nonce()
        deadline = time.monotonic() + self._timeout
        try:
            connection.settimeout(self._timeout)
            connection.sendall(json.dumps(JoinChallenge(nonce=challenge).to_message()).encode()
                               + b"\n")
            message = read_request(connection, deadline)
        except (OSError, ProtocolError):
            connection.close()
            return
        channel = Channel(connection)
        signed = bool(message.get("mac"))
        try:
            request = self._check(message, signed, challenge)
            accepted, begin = self._admit(request, channel, signed)
        except JoinRefused as refused:
            try:
                channel.send(JoinRejected(reason=str(refused)), self._key if signed else None)
            except OSError:
                pass
            channel.close()
            return
        if signed:
            accepted = replace(accepted, rdzv_configs=self._rdzv_configs)
        try:
            channel.send(accepted, self._key if signed else None)
        except OSError:
            channel.shutdown()  # the Job reads the end of it as the node gone
        if signed:
            channel.seal_frames(auth.FrameSeal(auth.session_key(self._key, challenge, request.nonce),
                                               sends="job"))
        connection.settimeout(None)
        begin()

    def _check(self, message: dict[str, Any], signed: bool, challenge: str) -> JoinRequest:
        try:
            if signed:
                message = auth.unseal(self._key, message, "the join request")
            request = parse_request(message)
        except ProtocolError as exc:
            raise JoinRefused(str(exc)) from None
        if signed and not auth.equal(challenge, request.challenge):
            raise JoinRefused("the join request does not answer this connection's challenge "
                              "(a request replayed from another connection)")
        if not signed and not self._trust_store:
            raise JoinRefused(
                "this job admits only nodes that hold its key: join with --key-file (the "
                "notebook's job.join_command() prints the command and job.key_file names the "
                "file), or launch the job with trust_store=True to admit nodes that show the "
                "store's token (then whoever reaches the store can run code in the job)")
        if not signed and not auth.equal(self.token, request.token):
            raise JoinRefused("wrong join token (read it from the rendezvous store of this run)")
        if not signed and request.ticket >= 0:
            raise JoinRefused("a node started by the job must sign its request with the job's key")
        return request


def read_request(connection: socket.socket, deadline: float) -> dict[str, Any]:
    """The first line a peer sends, as a JSON object; ProtocolError or OSError otherwise."""
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProtocolError("no join request before the deadline")
        connection.settimeout(remaining)
        chunk = connection.recv(4096)
        if not chunk:
            raise ProtocolError("the peer closed before it asked to join")
        data += chunk
        if len(data) > MAX_HANDSHAKE_BYTES:
            raise ProtocolError(f"a join request longer than {MAX_HANDSHAKE_BYTES} bytes")
    return json_object(data.split(b"\n", 1)[0], "a join request")


class JoinDesk:
    """One job's door for nodes of other machines: the descriptor, the server, admission.

    ``open`` starts the server and publishes the descriptor (in the embedded
    store, or the job's rendezvous store; ``wait_published``); ``address``;
    ``close``. Each node admitted is added to the job's state and handles and
    ``watch``-ed.
    """

    def __init__(self, core: JobCore, watch: Callable[[NodeHandle], None]) -> None:
        self._core = core
        self._watch = watch
        options = core.plan.options
        self._server = JoinServer(core.plan.listen_addr, self._admit, f"elastic_nb-{core.run_id}",
                                  core.key, options.trust_store, options.rdzv_configs)
        self._published = threading.Event()
        self._unavailable = ""  # why the descriptor could not be published

    @property
    def address(self) -> str:
        return self._server.address

    def open(self, store: Any) -> None:
        """Start the server and publish the descriptor, on a thread (a slow store must not hold
        up the launch); ``wait_published`` before a node elsewhere is submitted."""
        self._server.start()
        threading.Thread(target=self._publish, args=(store,), daemon=True,
                         name=f"elastic_nb-publish-{self._core.run_id}").start()

    def wait_published(self, timeout: float) -> None:
        """Block until the descriptor is in the store (a node submitted before could read a
        previous job's); LaunchError if it could not be published."""
        if not self._published.wait(timeout):
            raise LaunchError(f"the job's descriptor was not published in its rendezvous store "
                              f"at {self._core.endpoint} within {timeout:.0f} s: check that "
                              "the store answers (rdzv_timeout)")
        if self._unavailable:
            raise LaunchError(f"nodes elsewhere could not find this job: {self._unavailable}")

    def close(self) -> None:
        self._server.close()

    def _publish(self, store: Any) -> None:
        core, plan = self._core, self._core.plan
        assert plan.default_payload is not None
        descriptor = JoinDescriptor(plan.default_payload, self.address, self._server.token,
                                    plan.options)
        try:
            store = store or discovery.open_store(
                plan.backend, core.endpoint, plan.run_id, plan.options.rdzv_configs,
                plan.options.rdzv_timeout)
            discovery.publish(store, plan.run_id, descriptor, core.key)
        except Exception as exc:  # the job runs on; only joining from elsewhere is off
            self._unavailable = f"{type(exc).__name__}: {exc}"
            with core.lock:
                core.apply([core.state.record(time.time(), EventKind.JOIN_UNAVAILABLE,
                                              detail={"error": self._unavailable})])
        finally:
            self._published.set()

    def _admit(self, request: JoinRequest, channel: Channel, signed: bool) -> Admitted:
        """A node passed the handshake's checks: a node started for its ticket, or a new one;
        the Job reads its channel once the answer is sent."""
        if request.ticket >= 0:
            return self._admit_ticket(request, channel)
        core = self._core
        with core.lock:
            reason = controls.check_can_add_node(core.state, core.plan.options.max_nodes)
            if reason:
                raise JoinRefused(f"job {core.run_id}: {reason}")
            index = len(core.state.nodes)
            core.apply(controls.node_added(core.state, index, request.nproc, request.role,
                                        local=False, host=request.host, now=time.time()))
            core.nodes[index] = node = JoinedNode(index, channel, request.host)
        return JoinAccepted(node=index, nonce=request.nonce), lambda: self._watch(node)

    def _admit_ticket(self, request: JoinRequest, channel: Channel) -> Admitted:
        """The node the job started as node ``ticket`` arrives (signed): it takes its place, or,
        if it refused what it found in the store, the job records why."""
        core, index = self._core, request.ticket
        with core.lock:
            node = core.nodes.get(index)
            queued = core.state.nodes[index].status if index in core.state.nodes else None
            if not isinstance(node, ScheduledNode) or queued != NodeStatus.QUEUED:
                raise JoinRefused(f"job {core.run_id} has no node {index} waiting to join "
                                  f"(it is {queued or 'unknown'})")
            if request.refused:
                now = time.time()
                core.apply(scheduling.join_refused(core.state, index, request.refused, now)
                           + scheduling.never_joined(
                               core.state, index, f"it refused to run the job: {request.refused}",
                               now))
                raise JoinRefused(request.refused)
            node.attach(channel, request.host, request.pid)
            core.apply(scheduling.scheduled_node_joined(core.state, index, request.host,
                                                        time.time()))
        return (JoinAccepted(node=index, nonce=request.nonce, payload=node.payload),
                lambda: self._watch(node))
