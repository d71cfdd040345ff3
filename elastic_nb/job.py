"""The Job: controller and state model of one elastic job.

A Job starts one agent process per node, reads their reports on a single pump
thread, tails every rank's log files, and keeps the state model that views
(text repr, widgets, magics) observe: state, workers, events, results,
failures, logs. Commands (kill a rank, stop) go from here to processes.
"""

from __future__ import annotations

import atexit
import os
import queue
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle

from elastic_nb import controls, events, payload
from elastic_nb.errors import JobFailed, RankFailure
from elastic_nb.events import AgentConfig, Channel, Event, JobOptions
from elastic_nb.logs import LogBook, LogLine, LogSource, LogTailer, started_sources
from elastic_nb.rendezvous import discovery

PENDING = "pending"
RENDEZVOUS = "rendezvous"
RUNNING = "running"
RESTARTING = "restarting"
SUCCEEDED = "succeeded"
FAILED = "failed"
STOPPED = "stopped"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, STOPPED})

_POLL_INTERVAL = 0.05


@dataclass
class WorkerInfo:
    """One worker of the current attempt."""

    rank: int
    local_rank: int
    role: str
    group_rank: int
    node: int
    pid: int
    state: str
    restart_count: int
    attempt: int
    world_size: int


@dataclass
class NodePlan:
    """What one node runs: the packed call, its role and size."""

    nproc: int
    role: str
    payload: bytes


@dataclass
class JobPlan:
    """A validated launch: everything needed to start the nodes."""

    run_id: str
    backend: str
    endpoint: str
    nodes: list[NodePlan]
    options: JobOptions
    log_dir: str
    env: dict[str, str]
    listen_addr: str = "127.0.0.1"  # where the Job accepts nodes from other machines
    default_call: tuple[Any, tuple, dict[str, Any]] | None = None  # fn, args, kwargs for added nodes
    default_payload: bytes | None = None  # default_call packed: what a joining node runs
    store: Any = None  # the embedded c10d TCPStore, kept alive while the job runs


@dataclass
class _Node:
    """A node's agent: a local process, or (``process`` None) one that joined from ``host``."""

    index: int
    plan: NodePlan
    process: subprocess.Popen | None
    channel: Channel
    host: str = "localhost"
    status: str = "starting"  # starting, running, succeeded, failed, killed, exited
    error: str | None = None
    gone: bool = False  # its channel has closed
    # a joined node's log streams by (rank, stream, attempt): their lines come as messages
    remote_sources: dict[tuple[int, str, int], LogSource] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.process is not None

    def alive(self) -> bool:
        return self.process.poll() is None if self.process is not None else not self.gone


_LISTENER = "listener"
_live_jobs: weakref.WeakSet[Job] = weakref.WeakSet()


@atexit.register
def _stop_live_jobs() -> None:
    for job in list(_live_jobs):
        job.stop()


class Job:
    """A running (or finished) elastic job. Create one with ``elastic_nb.launch``."""

    def __init__(self, plan: JobPlan) -> None:
        self._plan = plan
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._nodes: dict[int, _Node] = {}
        self._workers: dict[int, WorkerInfo] = {}
        self._rank_dirs: dict[int, str] = {}
        self._members: list[int] | None = None  # the nodes of the last world formed, by group rank
        self._forming: dict[int, int] = {}  # group rank -> node, of the round being reported
        self._events: list[Event] = []
        self._results: dict[int, Any] = {}
        self._failures: dict[int, RankFailure] = {}
        self._failure_history: list[RankFailure] = []
        self._state = PENDING
        self._error: str | None = None
        self._stop_requested = False
        self._started_at = time.time()
        self._finished_at: float | None = None
        self._listeners: list[Callable[[Event], None]] = []
        self._book = LogBook()
        self._tailer = LogTailer(self._book)
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._join_token = secrets.token_hex(16)
        self._listener = socket.create_server((plan.listen_addr, 0))
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._pump = threading.Thread(target=self._pump_loop, name=f"elastic_nb-{plan.run_id}",
                                      daemon=True)

    # ----------------------------------------------------------------- start

    def start(self) -> Job:
        with self._lock:
            self._record(events.LAUNCHED, detail={
                "run_id": self.run_id, "backend": self.backend, "endpoint": self.endpoint,
                "nodes": len(self._plan.nodes), "world_size": self.planned_world_size})
            for index, node_plan in enumerate(self._plan.nodes):
                self._start_node(index, node_plan)
            self._set_state(RENDEZVOUS)
        _live_jobs.add(self)
        self._pump.start()
        if self._plan.default_payload is not None:
            threading.Thread(target=self._publish_join_descriptor, daemon=True,
                             name=f"elastic_nb-publish-{self.run_id}").start()
        return self

    @property
    def join_address(self) -> str:
        """Where nodes from other machines connect (published in the rendezvous store)."""
        host, port = self._listener.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.getfqdn()
        return f"{host}:{port}"

    def join_command(self) -> str:
        """The command that joins this job from another terminal or machine."""
        return (f"python -m elastic_nb join --backend {self.backend} --endpoint {self.endpoint} "
                f"--run-id {self.run_id} --nproc N")

    def _publish_join_descriptor(self) -> None:
        plan = self._plan
        descriptor = {
            "payload": events.encode_bytes(plan.default_payload),
            "job_address": self.join_address,
            "token": self._join_token,
            "options": plan.options.to_message(),
        }
        try:
            store = plan.store or discovery.open_store(
                self.backend, self.endpoint, self.run_id, plan.options.rdzv_configs,
                plan.options.rdzv_timeout)
            discovery.publish(store, self.run_id, descriptor)
        except Exception as exc:  # the job runs on; only joining from elsewhere is off
            with self._lock:
                self._record(events.JOIN_UNAVAILABLE, detail={"error": f"{type(exc).__name__}: {exc}"})

    def _start_node(self, index: int, node_plan: NodePlan) -> None:
        ours, theirs = socket.socketpair()
        node_dir = os.path.join(self._plan.log_dir, f"node_{index}")
        os.makedirs(node_dir, exist_ok=True)
        with open(os.path.join(node_dir, "agent.log"), "ab") as agent_log:
            process = subprocess.Popen(
                [sys.executable, "-m", "elastic_nb.agent", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=agent_log,
                stderr=subprocess.STDOUT,
                env=self._agent_env(),
                cwd=os.getcwd(),
            )
        theirs.close()
        channel = Channel(ours)
        config = AgentConfig(
            node=index, role=node_plan.role, nproc=node_plan.nproc, payload=node_plan.payload,
            run_id=self.run_id, backend=self.backend, endpoint=self.endpoint,
            options=self._plan.options, log_dir=node_dir, local_addr="127.0.0.1",
        )
        channel.send(events.CONFIGURE, **config.to_message())
        node = _Node(index, node_plan, process, channel)
        self._nodes[index] = node
        self._selector.register(ours, selectors.EVENT_READ, node)

    def _agent_env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [p for p in sys.path if p]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        env["ELASTIC_NB_RUN_ID"] = self.run_id  # marks every process of this job
        env["ELASTIC_NB_KERNEL_PID"] = str(os.getpid())  # ... and the kernel that launched it
        if self.planned_world_size > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = "1"  # as torchrun: no oversubscription by default
        env.update(self._plan.env)
        return env

    # ----------------------------------------------------------- properties

    @property
    def run_id(self) -> str:
        return self._plan.run_id

    @property
    def backend(self) -> str:
        return self._plan.backend

    @property
    def endpoint(self) -> str:
        return self._plan.endpoint

    @property
    def log_dir(self) -> str:
        return self._plan.log_dir

    @property
    def max_restarts(self) -> int:
        return self._plan.options.max_restarts

    @property
    def log_line_prefix_template(self) -> str:
        return self._plan.options.log_line_prefix_template

    @property
    def planned_world_size(self) -> int:
        return sum(n.nproc for n in self._plan.nodes)

    @property
    def state(self) -> str:
        return self._state

    @property
    def done(self) -> bool:
        return self._state in FINAL_STATES

    @property
    def elapsed(self) -> float:
        return (self._finished_at or time.time()) - self._started_at

    @property
    def workers(self) -> list[WorkerInfo]:
        """The workers of the current attempt, by rank."""
        with self._lock:
            return [replace(w) for _, w in sorted(self._workers.items())]

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    @property
    def failures(self) -> dict[int, RankFailure]:
        """The failures that ended the job, by rank (empty unless it failed)."""
        with self._lock:
            return dict(self._failures)

    @property
    def failure_history(self) -> list[RankFailure]:
        """Every rank failure of every attempt, restarted ones included."""
        with self._lock:
            return list(self._failure_history)

    @property
    def restart_count(self) -> int:
        with self._lock:
            return max((w.restart_count for w in self._workers.values()), default=0)

    @property
    def nodes(self) -> dict[int, str]:
        """Each node's status: starting, running, succeeded, failed, killed or exited."""
        with self._lock:
            return {i: n.status for i, n in self._nodes.items()}

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for each new event (from the Job's pump thread)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    @property
    def log_book(self) -> LogBook:
        return self._book

    # -------------------------------------------------------------- results

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job ends; the final state. TimeoutError if it has not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._changed:
                while not self.done:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"job {self.run_id} is still {self._state} after {timeout} s")
                    self._changed.wait(0.5 if remaining is None else min(remaining, 0.5))
        except KeyboardInterrupt:
            self.stop()
            raise
        if threading.current_thread() is not self._pump:
            self._pump.join()
        return self._state

    def result(self, timeout: float | None = None) -> dict[int, Any]:
        """Return values by global rank; raises JobFailed if the job failed or was stopped."""
        state = self.wait(timeout)
        with self._lock:
            if state == SUCCEEDED:
                return dict(sorted(self._results.items()))
            if state == STOPPED:
                raise JobFailed(f"job {self.run_id} was stopped before it finished")
            if self._failures:
                raise JobFailed.from_failures(self._failures)
            raise JobFailed(f"job {self.run_id} failed: {self._error}")

    def logs(self, rank: int | None = None, stream: str | None = None,
             attempt: int | None = None) -> str:
        """Every line the ranks printed, prefixed; filter by rank, stream and attempt."""
        if stream is not None and stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        if self.done and threading.current_thread() is not self._pump:
            self._pump.join()
        template = self._plan.options.log_line_prefix_template
        lines = [line.render(template) for line in self._book.lines(rank, stream, attempt)]
        dropped = self._book.dropped(rank)
        if dropped:
            lines.insert(0, f"[elastic_nb] {dropped} earlier lines were dropped from memory; "
                            f"every line is on disk under {self.log_dir}")
        return "\n".join(lines) + ("\n" if lines else "")

    def follow(self) -> Iterator[str]:
        """Yield each rank's lines, prefixed, as they arrive, until the job ends."""
        pending: queue.SimpleQueue[list[LogLine]] = queue.SimpleQueue()
        self._book.add_listener(pending.put)
        template = self._plan.options.log_line_prefix_template
        try:
            while True:
                try:
                    batch = pending.get(timeout=0.1)
                except queue.Empty:
                    if self.done and not self._pump.is_alive():
                        break
                    continue
                for line in batch:
                    yield line.render(template)
            while not pending.empty():
                for line in pending.get():
                    yield line.render(template)
        finally:
            self._book.remove_listener(pending.put)

    # ------------------------------------------------------------- controls

    def kill(self, rank: int, sig: controls.SignalLike = signal.SIGKILL) -> None:
        """Send ``sig`` to one worker; the agent's restart policy then applies."""
        signum = controls.parse_signal(sig)
        with self._lock:
            worker = self._workers.get(rank)
            if worker is None or worker.state != "running":
                running = sorted(r for r, w in self._workers.items() if w.state == "running")
                state = worker.state if worker else "unknown"
                raise ValueError(f"rank {rank} is not running (state: {state}); "
                                 f"running ranks: {running}")
            node = self._nodes[worker.node]
            if node.local:
                controls.send_signal(worker.pid, signum)
            else:
                node.channel.send(events.SIGNAL, pid=worker.pid, signal=signum.name)
            self._record(events.KILLED, node=worker.node, rank=rank,
                         detail={"signal": signum.name, "pid": worker.pid})

    def kill_node(self, index: int) -> None:
        """A machine lost: SIGKILL node ``index``'s agent and all its workers at once."""
        with self._lock:
            node = self._nodes.get(index)
            if node is None or node.status not in ("starting", "running"):
                live = sorted(i for i, n in self._nodes.items() if n.status in ("starting", "running"))
                state = node.status if node else "unknown"
                raise ValueError(f"node {index} is not running (status: {state}); live nodes: {live}")
            node.status = "killed"
            self._record(events.NODE_KILLED, node=index, detail={"host": node.host})
            if not node.local:
                node.channel.send(events.KILL)
                return
        controls.kill_node(node.process)

    def add_node(self, node: Any) -> int:
        """Start another agent that joins at the next rendezvous round; its node index.

        ``node`` is an ``elastic_nb.Node``; without its own ``fn`` it runs the
        job's function.
        """
        from elastic_nb.api import plan_node  # api builds on job; imported at call time

        with self._lock:
            if self.done:
                raise RuntimeError(f"job {self.run_id} has already {self._state}")
            live = [i for i, n in self._nodes.items() if n.status in ("starting", "running")]
            if len(live) >= self._plan.options.max_nodes:
                raise ValueError(f"the job already has max_nodes={self._plan.options.max_nodes} live "
                                 f"nodes {live}; launch with a larger max_nodes to scale up")
            index = len(self._nodes)
            default = self._plan.default_call or (None, (), {})
            node_plan = plan_node(index, node, *default, self._plan.default_payload)
            self._plan.nodes.append(node_plan)
            self._start_node(index, node_plan)
            self._record(events.NODE_ADDED, node=index, detail={
                "nproc": node_plan.nproc, "role": node_plan.role})
        self._wake()
        return index

    def restart(self) -> None:
        """Stop the current workers and start a new attempt now (reason ``user``).

        A user restart does not use up the restart budget.
        """
        with self._lock:
            if self.done:
                raise RuntimeError(f"job {self.run_id} has already {self._state}")
            for node in self._nodes.values():
                if node.status == "running":
                    node.channel.send(events.RESTART)

    def stacks(self, timeout: float = 5) -> dict[int, str]:
        """The live Python stack of every thread of every running rank.

        Each worker dumps its stacks (faulthandler) when signalled; a rank that
        does not answer within ``timeout`` maps to a line saying so.
        """
        with self._lock:
            targets = {}
            dumps: dict[int, str] = {}
            for rank, worker in self._workers.items():
                node = self._nodes[worker.node]
                if worker.state != "running":
                    continue
                if not node.local:  # its files and pids are on another machine
                    dumps[rank] = (f"rank {rank} runs on node {node.index}, joined from {node.host}: "
                                   f"dump its stacks there (py-spy dump --pid {worker.pid})")
                    continue
                path = os.path.join(self._rank_dirs[rank], payload.STACKS_FILE)
                if os.path.exists(path):
                    targets[rank] = (worker.pid, path, os.path.getsize(path))
                else:  # the worker has not reached the user's function yet
                    dumps[rank] = f"rank {rank} (pid {worker.pid}) is still starting: no stack yet"
        for pid, _, _ in targets.values():
            controls.send_signal(pid, payload.STACK_DUMP_SIGNAL)
        deadline = time.monotonic() + timeout
        sizes = {rank: -1 for rank in targets}
        while any(rank not in dumps for rank in targets) and time.monotonic() < deadline:
            time.sleep(0.05)
            for rank, (_, path, start) in targets.items():
                size = os.path.getsize(path)
                if rank not in dumps and size > start and size == sizes[rank]:
                    with open(path, "rb") as f:
                        f.seek(start)
                        dumps[rank] = f.read().decode("utf-8", errors="replace")
                sizes[rank] = size
        for rank, (pid, _, _) in targets.items():
            dumps.setdefault(rank, f"rank {rank} (pid {pid}) did not dump its stacks within {timeout} s")
        return dict(sorted(dumps.items()))

    def stop(self) -> None:
        """End the job now: SIGTERM each node, SIGKILL what is left; no process remains."""
        with self._lock:
            self._stop_requested = True
            nodes = [n for n in self._nodes.values() if n.alive()]
            self._check_finished()
        self._stop_nodes(nodes)
        with self._lock:
            if not self.done:
                self._finish(STOPPED)
        if self._pump.is_alive() and threading.current_thread() is not self._pump:
            self._wake()
            self._pump.join()

    def _stop_nodes(self, nodes: list[_Node]) -> None:
        """Stop local nodes (SIGTERM, then SIGKILL); ask remote ones to stop, then let go."""
        grace = self._plan.options.shutdown_timeout + 2
        for node in nodes:
            if not node.local:
                try:
                    node.channel.send(events.STOP)
                except OSError:
                    pass
        for node in nodes:
            if node.local:
                controls.stop_node(node.process, grace=grace)
        deadline = time.monotonic() + grace
        with self._changed:
            while any(not n.gone for n in nodes if not n.local) and time.monotonic() < deadline:
                self._changed.wait(0.1)
            for node in nodes:
                if not node.local and not node.gone:
                    node.gone = True  # unresponsive: its agent stops when it loses us
                    node.channel.socket.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------ the pump thread

    def _wake(self) -> None:
        try:
            self._wakeup_w.send(b"x")
        except OSError:
            pass

    def _pump_loop(self) -> None:
        try:
            while True:
                for key, _ in self._selector.select(_POLL_INTERVAL):
                    if key.data is None:
                        self._wakeup_r.recv(4096)
                        continue
                    if key.data == _LISTENER:
                        self._accept()
                        continue
                    if isinstance(key.data, Channel):
                        self._handshake(key.data)
                        continue
                    node: _Node = key.data
                    try:
                        messages, ended = node.channel.receive_ready()
                    except ConnectionError:
                        messages, ended = [], True
                    for message in messages:
                        self._on_message(node, message)
                    if ended:
                        self._selector.unregister(node.channel.socket)
                        self._on_node_gone(node)
                self._tailer.poll()
                with self._lock:
                    if self.done and not any(isinstance(k.data, _Node)
                                             for k in self._selector.get_map().values()):
                        break
                    if self.done:
                        self._reap_finished_nodes()
        finally:
            self._tailer.retire_all()
            self._tailer.poll()
            self._close()

    def _accept(self) -> None:
        connection, _ = self._listener.accept()
        connection.settimeout(5)  # a peer that connects and says nothing cannot stall the pump
        self._selector.register(connection, selectors.EVENT_READ, Channel(connection))

    def _handshake(self, channel: Channel) -> None:
        """A node from another machine asks to join: check its token, give it an index."""
        self._selector.unregister(channel.socket)
        try:
            messages, ended = channel.receive_ready()
            while not messages and not ended:
                messages, ended = channel.receive_ready()
        except (OSError, ValueError):
            channel.close()
            return
        channel.socket.settimeout(None)
        request = messages[0] if messages else {}
        with self._lock:
            reason = self._refuse_join(request)
            if reason:
                try:
                    channel.send(events.REJECTED, reason=reason)
                finally:
                    channel.close()
                return
            index = len(self._nodes)
            node_plan = NodePlan(nproc=int(request["nproc"]), role=str(request["role"]),
                                 payload=self._plan.default_payload)
            self._plan.nodes.append(node_plan)
            node = _Node(index, node_plan, None, channel, host=str(request.get("host", "?")))
            self._nodes[index] = node
            self._selector.register(channel.socket, selectors.EVENT_READ, node)
            channel.send(events.ACCEPTED, node=index)
            self._record(events.NODE_ADDED, node=index, detail={
                "nproc": node_plan.nproc, "role": node_plan.role, "host": node.host})

    def _refuse_join(self, request: dict[str, Any]) -> str | None:
        if request.get("kind") != events.JOIN:
            return "expected a join request"
        if not secrets.compare_digest(str(request.get("token", "")), self._join_token):
            return "wrong join token (read it from the rendezvous store of this run)"
        if self.done:
            return f"job {self.run_id} has already {self._state}"
        live = sum(1 for n in self._nodes.values() if n.alive())
        if live >= self._plan.options.max_nodes:
            return f"job {self.run_id} already has max_nodes={self._plan.options.max_nodes} live nodes"
        if not isinstance(request.get("nproc"), int) or request["nproc"] < 1:
            return "nproc must be an int >= 1"
        return None

    def _reap_finished_nodes(self) -> None:
        for node in self._nodes.values():
            if node.local and node.process.poll() is not None:
                try:
                    self._selector.unregister(node.channel.socket)
                except (KeyError, ValueError):
                    continue
                self._on_node_gone(node)

    def _close(self) -> None:
        with self._lock:
            for node in self._nodes.values():
                node.channel.close()
            for key in list(self._selector.get_map().values()):
                if isinstance(key.data, Channel):
                    key.data.close()
            self._listener.close()
            self._selector.close()
            self._wakeup_r.close()
            self._wakeup_w.close()
            self._plan.store = None
            _live_jobs.discard(self)
            self._changed.notify_all()

    # --------------------------------------------------- state transitions

    def _record(self, kind: str, node: int | None = None, rank: int | None = None,
                detail: dict[str, Any] | None = None) -> Event:
        event = Event(time.time(), kind, node, rank, detail or {})
        self._events.append(event)
        for listener in list(self._listeners):
            listener(event)
        self._changed.notify_all()
        return event

    def _set_state(self, state: str) -> None:
        if not self.done:
            self._state = state
            self._changed.notify_all()

    def _on_message(self, node: _Node, message: dict[str, Any]) -> None:
        kind = message["kind"]
        with self._lock:
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:
                handler(node, message)
            self._check_finished()

    def _note_round_member(self, node: int, group_rank: int, group_world_size: int,
                           world_size: int) -> None:
        """Once every node of a round has reported, compare its nodes with the last world's."""
        if group_rank in self._forming or any(rank >= group_world_size for rank in self._forming):
            self._forming = {}  # a new round began before the last one was fully reported
        self._forming[group_rank] = node
        if len(self._forming) < group_world_size:
            return
        members = [self._forming[rank] for rank in sorted(self._forming)]
        self._forming = {}
        if self._members is not None and sorted(members) != sorted(self._members):
            self._record(events.MEMBERSHIP_CHANGED, detail={
                "nodes": len(members), "world_size": world_size,
                "previous_nodes": len(self._members), "members": members,
                "joined": sorted(set(members) - set(self._members)),
                "left": sorted(set(self._members) - set(members))})
        self._members = members

    def _on_rendezvous(self, node: _Node, msg: dict[str, Any]) -> None:
        self._record(events.RENDEZVOUS, node=node.index, detail={
            "group_rank": msg["group_rank"], "group_world_size": msg["group_world_size"],
            "world_size": msg["world_size"]})
        self._note_round_member(node.index, msg["group_rank"], msg["group_world_size"],
                                msg["world_size"])
        if self._state == PENDING:
            self._set_state(RENDEZVOUS)

    def _on_started(self, node: _Node, msg: dict[str, Any]) -> None:
        node.status = "running"
        self._tailer.retire(lambda s: s.node == node.index)
        for rank in [r for r, w in self._workers.items() if w.node == node.index]:
            del self._workers[rank]
        for w in msg["workers"]:
            info = WorkerInfo(
                rank=w["rank"], local_rank=w["local_rank"], role=msg["role"],
                group_rank=msg["group_rank"], node=node.index, pid=w["pid"], state="running",
                restart_count=msg["restart_count"], attempt=msg["attempt"],
                world_size=w["world_size"])
            self._workers[info.rank] = info
            self._rank_dirs[info.rank] = os.path.dirname(w["stdout"])
        sources = started_sources(node.index, msg)
        if node.local:
            self._tailer.follow(sources)
        else:  # a joined node's files are on its machine: it sends their lines (_on_log)
            node.remote_sources.update(((s.rank, s.stream, s.attempt), s) for s in sources)
        self._record(events.STARTED, node=node.index, detail={
            "attempt": msg["attempt"], "restart_count": msg["restart_count"],
            "ranks": [w["rank"] for w in msg["workers"]],
            "pids": [w["pid"] for w in msg["workers"]]})
        self._set_state(RUNNING)

    def _on_log(self, node: _Node, msg: dict[str, Any]) -> None:
        source = node.remote_sources.get((msg["rank"], msg["stream"], msg["attempt"]))
        if source is not None:
            self._book.append(source, msg["lines"], time.time())  # our clock, not the node's

    def _rank_failure(self, node: _Node, report: dict[str, Any]) -> RankFailure:
        return RankFailure(
            rank=report["rank"], local_rank=report["local_rank"], role=node.plan.role,
            node=node.index, exitcode=report["exitcode"], signal=report["signal"],
            message=report["message"], traceback=report["traceback"],
            restart_count=report["restart_count"], time=float(report["timestamp"]),
            pid=report["pid"])

    def _on_worker_failed(self, node: _Node, msg: dict[str, Any]) -> None:
        for report in msg["failures"]:
            failure = self._rank_failure(node, report)
            self._failure_history.append(failure)
            worker = self._workers.get(failure.rank)
            if worker is not None:
                worker.state = "failed"
            self._record(events.WORKER_FAILED, node=node.index, rank=failure.rank, detail={
                "message": failure.message, "exitcode": failure.exitcode,
                "signal": failure.signal, "restart_count": failure.restart_count,
                "remaining_restarts": msg["remaining_restarts"]})

    def _on_restarting(self, node: _Node, msg: dict[str, Any]) -> None:
        for worker in self._workers.values():
            if worker.node == node.index and worker.state == "running":
                worker.state = "restarting"
        self._tailer.retire(lambda s: s.node == node.index)
        self._record(events.RESTARTING, node=node.index, detail={
            "reason": msg["reason"], "remaining_restarts": msg["remaining_restarts"],
            "max_restarts": msg["max_restarts"]})
        self._set_state(RESTARTING)

    def _on_succeeded(self, node: _Node, msg: dict[str, Any]) -> None:
        node.status = "succeeded"
        for rank, blob in msg["return_values"].items():
            self._results[int(rank)] = cloudpickle.loads(events.decode_bytes(blob))
        for worker in self._workers.values():
            if worker.node == node.index:
                worker.state = "succeeded"

    def _on_failed(self, node: _Node, msg: dict[str, Any]) -> None:
        node.status = "failed"
        for report in msg["failures"]:
            failure = self._rank_failure(node, report)
            self._failures[failure.rank] = failure
        for worker in self._workers.values():
            if worker.node == node.index and worker.state != "failed":
                worker.state = "stopped"

    def _on_agent_error(self, node: _Node, msg: dict[str, Any]) -> None:
        node.status = "failed"
        node.error = msg["message"]
        self._error = self._error or msg["message"]

    def _on_node_gone(self, node: _Node) -> None:
        """The agent's channel closed: it exited, was killed, or crashed."""
        returncode = node.process.wait() if node.local else None
        with self._lock:
            node.gone = True
            if node.status in ("starting", "running"):
                if self._stop_requested or node.status == "killed":
                    node.status = "killed"
                else:
                    node.status = "failed"
                    where = (f"see {self.log_dir}/node_{node.index}/agent.log" if node.local
                             else f"on {node.host}")
                    node.error = (f"the agent of node {node.index} exited unexpectedly "
                                  f"(exit code {returncode}); {where}")
                    self._error = self._error or node.error
            for worker in self._workers.values():
                if worker.node == node.index and worker.state in ("running", "restarting"):
                    worker.state = "stopped"
            self._tailer.retire(lambda s: s.node == node.index)
            self._record(events.NODE_EXITED, node=node.index,
                         detail={"status": node.status, "exitcode": returncode})
            self._check_finished()

    def _check_finished(self) -> None:
        if self.done:
            return
        statuses = [n.status for n in self._nodes.values()]
        if self._stop_requested:
            if not any(s in ("starting", "running") for s in statuses):
                self._finish(STOPPED)
        elif any(s == "failed" for s in statuses):
            self._finish(FAILED)
            self._stop_remaining_nodes()
        elif all(s in ("succeeded", "killed") for s in statuses):
            if any(s == "succeeded" for s in statuses):
                self._finish(SUCCEEDED)
            else:
                self._error = self._error or "every node was killed"
                self._finish(FAILED)

    def _finish(self, state: str) -> None:
        self._state = state
        self._finished_at = time.time()
        detail: dict[str, Any] = {"elapsed": round(self.elapsed, 3)}
        if state == FAILED:
            if self._failures:
                first = min(self._failures.values(), key=lambda f: (f.time, f.rank))
                detail["error"] = first.summary()
            elif self._error:
                detail["error"] = self._error
        self._record(state, detail=detail)
        self._wake()

    def _stop_remaining_nodes(self) -> None:
        """A failed job ends promptly: stop the nodes still running, off the pump thread."""
        running = [n for n in self._nodes.values() if n.alive()]
        if not running:
            return

        def stop_all() -> None:
            self._stop_nodes(running)
            self._wake()

        threading.Thread(target=stop_all, name="elastic_nb-stop", daemon=True).start()

    # ------------------------------------------------------------- display

    def summary(self) -> str:
        """A readable text summary (what a terminal or nbconvert shows)."""
        with self._lock:
            head = (f"Job {self.run_id} [{self._state}] backend={self.backend} "
                    f"world={len(self._workers) or self.planned_world_size} "
                    f"restarts={self.restart_count}/{self.max_restarts} "
                    f"elapsed={self.elapsed:.1f}s")
            rows = [f"  rank {w.rank:>3} node {w.node} {w.role:<10} pid {w.pid:<8} {w.state}"
                    for _, w in sorted(self._workers.items())]
            if self._state == FAILED:
                if self._failures:
                    first = min(self._failures.values(), key=lambda f: (f.time, f.rank))
                    rows.append("  " + first.summary())
                elif self._error:
                    rows.append("  " + self._error)
        return "\n".join([head, *rows])

    def __repr__(self) -> str:
        return self.summary()

    def show(self) -> None:
        """Display the live dashboard (the text summary outside a Jupyter kernel)."""
        from elastic_nb import widgets

        widgets.show(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from elastic_nb import widgets

        return widgets.mimebundle(self, include, exclude)
