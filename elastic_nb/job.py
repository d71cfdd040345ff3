"""The Job: the public handle of one elastic job, and the pump that feeds its state.

One pump thread reads every node's reports, parses them (``protocol``),
applies them to the state (``state``, pure rules) under the Job's one lock,
and acts on the events that come out: it follows and retires log files,
stops the remaining nodes of a failed job, tells listeners and wakes
waiters. Commands go the other way: a Job method checks them against the
state, then the supervisor (local nodes) or the node's channel (joined
nodes) carries them out. Views read ``snapshot()`` only.
"""

from __future__ import annotations

import atexit
import os
import queue
import selectors
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import cloudpickle

from elastic_nb import host_pool, network, stacks
from elastic_nb import snapshot as snapshots
from elastic_nb import state as rules
from elastic_nb.collapse import collapse as collapse_lines
from elastic_nb.debug_client import DebugSession
from elastic_nb.errors import JobFailed, RankFailure
from elastic_nb.join_server import JoinRefused, JoinServer
from elastic_nb.logs import LogBook, LogLine, LogSource, LogTailer, started_sources
from elastic_nb.plan import JobPlan, Node, plan_node
from elastic_nb.protocol import (
    AgentConfig,
    Channel,
    CommandKind,
    HostReady,
    Log,
    NodeDone,
    ProtocolError,
    Report,
    Restarting,
    Started,
    encode_bytes,
    parse_report,
)
from elastic_nb.rank_debugger import PROMPT
from elastic_nb.render import summary_text
from elastic_nb.rendezvous import discovery, embedded
from elastic_nb.state import Event, EventKind, JobState, JobStatus, NodeStatus, WorkerInfo
from elastic_nb.supervisor import (
    AgentProcess,
    SignalLike,
    StatsSampler,
    agent_environment,
    parse_signal,
    send_signal,
)

_POLL_INTERVAL = 0.05
_STATS_INTERVAL = 1.0
_EXIT_BARRIER_GRACE = 3.0  # after success, how long agents may take to pass torch's exit barrier
_live_jobs: weakref.WeakSet[Job] = weakref.WeakSet()


@atexit.register
def _stop_live_jobs() -> None:
    for job in list(_live_jobs):
        job.stop()


class Job:
    """A running (or finished) elastic job. Create one with ``elastic_nb.launch``.

    Reading (never blocks on the job):
        ``snapshot()`` the whole read model; ``state``, ``done``, ``workers``,
        ``nodes``, ``events``, ``failures``, ``failure_history``,
        ``restart_count``, ``elapsed``; ``logs()``, ``summary()``.
    Blocking (the name says so):
        ``wait()``, ``result()``, ``wait_until()``, ``follow()`` (an iterator).
    Commands:
        ``kill(rank, sig)``, ``kill_node(i)``, ``add_node(Node)``, ``restart()``,
        ``stacks()``, ``stop()``.
    Debugging a paused rank:
        ``debug(rank)`` (blocking: pdb through ``input()``), ``debug_session(rank)``.
    Observing:
        ``add_listener(fn)`` / ``remove_listener(fn)`` for events, ``log_book``
        for lines; ``show()`` displays the dashboard.
    Joining from elsewhere:
        ``join_address``, ``join_command()``.
    """

    def __init__(self, plan: JobPlan) -> None:
        self._plan = plan
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = JobState(started_at=time.time())
        self._listeners: list[Callable[[Event], None]] = []
        self._book = LogBook()
        self._tailer = LogTailer(self._book)
        self._agents: dict[int, AgentProcess] = {}
        self._released: set[int] = set()  # nodes whose host went back to the pool
        self._held: dict[int, AgentConfig] = {}  # configurations not sent yet
        self._booting: set[int] = set()  # nodes whose new host has not said it is up
        self._channels: dict[int, Channel] = {}
        self._remote_sources: dict[tuple[int, int, str, int], LogSource] = {}
        self._accepted: queue.SimpleQueue[tuple[int, Channel]] = queue.SimpleQueue()
        self._stats = StatsSampler()
        self._stats_lock = threading.Lock()
        self._last_stats: tuple[float, dict[int, tuple[float, int]]] = (0.0, {})
        self._store = None
        self._endpoint = plan.endpoint or ""
        if plan.endpoint is None:  # the embedded c10d store, hosted here while the job runs
            self._store = embedded.host_store(plan.listen_addr)
            self._endpoint = f"{plan.listen_addr}:{self._store.port}"
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._join_server = JoinServer(plan.listen_addr, self._admit, f"elastic_nb-{plan.run_id}")
        self._pump = threading.Thread(target=self._pump_loop, name=f"elastic_nb-{plan.run_id}",
                                      daemon=True)

    # ----------------------------------------------------------------- start

    def start(self) -> Job:
        with self._lock:
            self._apply(rules.launched(self._state, time.time(), {
                "run_id": self.run_id, "backend": self.backend, "endpoint": self.endpoint,
                "nodes": len(self._plan.nodes), "world_size": self.planned_world_size}))
            for index, node_plan in enumerate(self._plan.nodes):
                rules.add_node(self._state, index, node_plan.nproc, node_plan.role, local=True)
                self._start_agent(index, node_plan.nproc, node_plan.role, node_plan.payload,
                                  hold=True)
            self._release_held_configs()
        _live_jobs.add(self)
        self._pump.start()
        if self._plan.default_payload is not None:
            self._join_server.start()
            threading.Thread(target=self._publish_join_descriptor, daemon=True,
                             name=f"elastic_nb-publish-{self.run_id}").start()
        return self

    def _start_agent(self, index: int, nproc: int, role: str, payload: bytes,
                     hold: bool = False) -> None:
        """Give node ``index`` a host (an idle warm one, or a new one) and its configuration.

        ``hold``: the nodes launched together get their configurations only
        once every one of their hosts is up (``HostReady``); a warm node sent
        at once would form a smaller world with the nodes already there,
        then restart to take in the late ones.
        """
        node_dir = os.path.join(self._plan.log_dir, f"node_{index}")
        address = network.advertised_address(self._plan.listen_addr)
        sockets = network.socket_env(address, self._plan.env, os.environ)
        env = agent_environment(self.run_id, self.planned_world_size, {**self._plan.env, **sockets})
        # after the hosts this job has: nodes keep their order in torch's rendezvous
        above = max((a.pid for a in self._agents.values()), default=0)
        agent = host_pool.POOL.acquire(self.run_id, above_pid=above)
        warm = agent is not None
        if agent is None:
            agent = AgentProcess.start(node_dir, env, self._plan.options.start_method)
            host_pool.POOL.register(agent, self.run_id)
        channel = Channel(agent.socket)
        config = AgentConfig(
            node=index, role=role, nproc=nproc, payload=payload, run_id=self.run_id,
            backend=self.backend, endpoint=self.endpoint, options=self._plan.options,
            log_dir=node_dir, local_addr=address, env=env,
            sys_path=[p for p in sys.path if p], cwd=os.getcwd())
        rules.host_assigned(self._state, index, agent.pid, warm)
        self._agents[index] = agent
        self._channels[index] = channel
        self._selector.register(agent.socket, selectors.EVENT_READ, index)
        self._held[index] = config
        if not warm:
            self._booting.add(index)
        if not hold:
            self._send_config(index)

    def _send_config(self, index: int) -> None:
        config = self._held.pop(index, None)
        if config is None:
            return
        try:
            self._channels[index].send(CommandKind.CONFIGURE, **config.to_message())
        except OSError:  # the host died as it was taken: the pump sees its channel end
            pass

    def _release_held_configs(self) -> None:
        """Once no launched host is still booting, every held node gets its configuration."""
        if not self._booting:
            for index in list(self._held):
                self._send_config(index)

    def _host_ready(self, index: int) -> None:
        self._booting.discard(index)
        self._release_held_configs()

    @property
    def join_address(self) -> str:
        """Where nodes from other machines connect (published in the rendezvous store)."""
        return self._join_server.address

    def join_command(self) -> str:
        """The command that joins this job from another terminal or machine."""
        return (f"python -m elastic_nb join --backend {self.backend} --endpoint {self.endpoint} "
                f"--run-id {self.run_id} --nproc N")

    def _publish_join_descriptor(self) -> None:
        plan = self._plan
        assert plan.default_payload is not None
        descriptor = {
            "payload": encode_bytes(plan.default_payload),
            "job_address": self.join_address,
            "token": self._join_server.token,
            "options": plan.options.to_message(),
        }
        try:
            store = self._store or discovery.open_store(
                self.backend, self.endpoint, self.run_id, plan.options.rdzv_configs,
                plan.options.rdzv_timeout)
            discovery.publish(store, self.run_id, descriptor)
        except Exception as exc:  # the job runs on; only joining from elsewhere is off
            with self._lock:
                self._apply([self._state.record(time.time(), EventKind.JOIN_UNAVAILABLE, detail={
                    "error": f"{type(exc).__name__}: {exc}"})])

    def _admit(self, request: dict[str, Any], channel: Channel) -> int:
        """A node from another machine passed the handshake's checks: give it an index."""
        with self._lock:
            reason = rules.check_can_add_node(self._state, self._plan.options.max_nodes)
            if reason:
                raise JoinRefused(f"job {self.run_id}: {reason}")
            index = len(self._state.nodes)
            self._apply(rules.node_added(self._state, index, request["nproc"], request["role"],
                                         local=False, host=str(request.get("host", "?")),
                                         now=time.time()))
            self._channels[index] = channel
        self._accepted.put((index, channel))
        self._wake()
        return index

    # ----------------------------------------------------------- properties

    @property
    def run_id(self) -> str:
        return self._plan.run_id

    @property
    def backend(self) -> str:
        return self._plan.backend

    @property
    def endpoint(self) -> str:
        return self._endpoint

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
        """The ranks of the nodes launched (not of nodes killed or joined since)."""
        return self._plan.world_size

    @property
    def state(self) -> JobStatus:
        return self._state.status

    @property
    def done(self) -> bool:
        return self._state.done

    @property
    def elapsed(self) -> float:
        return (self._state.finished_at or time.time()) - self._state.started_at

    @property
    def workers(self) -> list[WorkerInfo]:
        """The workers of the current attempt, by rank."""
        with self._lock:
            return [replace(w) for _, w in sorted(self._state.workers.items())]

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._state.events)

    @property
    def failures(self) -> dict[int, RankFailure]:
        """The failures that ended the job, by rank (empty unless it failed)."""
        with self._lock:
            return dict(self._state.failures)

    @property
    def failure_history(self) -> list[RankFailure]:
        """Every rank failure of every attempt, restarted ones included."""
        with self._lock:
            return list(self._state.failure_history)

    @property
    def restart_count(self) -> int:
        with self._lock:
            return self._state.restart_count

    @property
    def nodes(self) -> dict[int, NodeStatus]:
        """Each node's status: starting, running, succeeded, failed, killed or stopped."""
        with self._lock:
            return {i: n.status for i, n in self._state.nodes.items()}

    @property
    def log_book(self) -> LogBook:
        return self._book

    def snapshot(self) -> snapshots.JobSnapshot:
        """The job as every view shows it, at this moment (CPU/RSS at most 1 s old)."""
        with self._lock:
            pids = [w.pid for w in self._state.workers.values()
                    if w.state.alive and self._state.nodes[w.node].local]
        stats = self._sample_stats(pids)
        last_output = self._book.last_line_time()
        with self._lock:
            return snapshots.build(self._plan, self.endpoint, self._state, last_output, stats,
                                   time.time(), idle_hosts=host_pool.POOL.idle_count())

    def _sample_stats(self, pids: list[int]) -> dict[int, tuple[float, int]]:
        with self._stats_lock:
            taken, stats = self._last_stats
            if time.monotonic() - taken >= _STATS_INTERVAL or set(pids) - set(stats):
                stats = self._stats.sample(pids)
                self._last_stats = (time.monotonic(), stats)
            return stats

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for each new event (from the Job's pump thread)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -------------------------------------------------------------- results

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the job ends; the final state. TimeoutError if it has not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._changed:
                while not self.done:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"job {self.run_id} is still {self.state} after {timeout} s")
                    self._changed.wait(0.5 if remaining is None else min(remaining, 0.5))
        except KeyboardInterrupt:
            self.stop()
            raise
        if threading.current_thread() is not self._pump:
            self._pump.join()
        return self.state

    def result(self, timeout: float | None = None) -> dict[int, Any]:
        """Return values by global rank; raises JobFailed if the job failed or was stopped."""
        status = self.wait(timeout)
        with self._lock:
            if status == JobStatus.SUCCEEDED:
                return {rank: cloudpickle.loads(blob)
                        for rank, blob in sorted(self._state.results.items())}
            if status == JobStatus.STOPPED:
                raise JobFailed(f"job {self.run_id} was stopped before it finished")
            if self._state.failures:
                raise JobFailed.from_failures(self._state.failures)
            raise JobFailed(f"job {self.run_id} failed: {self._state.error}")

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 90,
                   what: str = "the condition") -> Any:
        """Block until ``predicate()`` is truthy and return its value.

        ``job.wait_until(lambda: "step 3" in job.logs(rank=1), what="rank 1 at step 3")``.
        TimeoutError naming ``what`` after ``timeout`` seconds; RuntimeError at
        once if the job ends without the condition holding.
        """
        deadline = time.monotonic() + timeout
        while True:
            done = self.done
            value = predicate()
            if value:
                return value
            if done:
                raise RuntimeError(f"job {self.run_id} ended ({self.state}) before {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.run_id}: no {what} after {timeout} s "
                                   f"(it is {self.state})")
            with self._changed:
                self._changed.wait(0.05)

    def logs(self, rank: int | None = None, stream: str | None = None,
             attempt: int | None = None, collapse: bool = False) -> str:
        """Every line the ranks printed, prefixed; filter by rank, stream and attempt.

        ``collapse=True`` shows a line that several ranks printed near each
        other once, as ``[ranks 0-7]: line`` (a single rank's view is exact).
        """
        if stream is not None and stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        if self.done and threading.current_thread() is not self._pump:
            self._pump.join()
        template = self.log_line_prefix_template
        picked = self._book.lines(rank, stream, attempt)
        shown = collapse_lines(picked) if collapse and rank is None else picked
        lines = [line.render(template) for line in shown]
        dropped = self._book.dropped(rank)
        if dropped:
            lines.insert(0, f"[elastic_nb] {dropped} earlier lines were dropped from memory; "
                            f"every line is on disk under {self.log_dir}")
        return "\n".join(lines) + ("\n" if lines else "")

    def follow(self, collapse: bool = False) -> Iterator[str]:
        """Yield each rank's lines, prefixed, as they arrive, until the job ends (blocking).

        ``collapse=True`` shows the same line printed by several ranks within
        one batch (a tenth of a second) once, as ``[ranks 0-7]: line``.
        """
        pending: queue.SimpleQueue[list[LogLine]] = queue.SimpleQueue()
        self._book.add_listener(pending.put)
        template = self.log_line_prefix_template
        try:
            while True:
                try:
                    batch = pending.get(timeout=0.1)
                except queue.Empty:
                    if self.done and not self._pump.is_alive():
                        break
                    continue
                for line in collapse_lines(batch) if collapse else batch:
                    yield line.render(template)
            while not pending.empty():
                batch = pending.get()
                for line in collapse_lines(batch) if collapse else batch:
                    yield line.render(template)
        finally:
            self._book.remove_listener(pending.put)

    # ------------------------------------------------------------- controls

    def kill(self, rank: int, sig: SignalLike = "SIGKILL") -> None:
        """Send ``sig`` to one worker; the agent's restart policy then applies."""
        signum = parse_signal(sig)
        with self._lock:
            worker = self._state.workers.get(rank)
            events = rules.rank_killed(self._state, rank, signum.name, time.time())
            assert worker is not None
            if worker.node in self._agents:
                send_signal(worker.pid, signum)
            else:
                self._channels[worker.node].send(CommandKind.SIGNAL, pid=worker.pid,
                                                 signal=signum.name)
            self._apply(events)

    def kill_node(self, index: int) -> None:
        """A machine lost: SIGKILL node ``index``'s agent and all its workers at once."""
        with self._lock:
            self._apply(rules.node_killed(self._state, index, time.time()))
            self._restart_survivors(index)  # first: their workers must not fail on the lost peer
            agent = self._agents.get(index)
            if agent is None:
                self._channels[index].send(CommandKind.KILL)
                return
        host_pool.POOL.discard(agent)  # the host dies with its node

    def add_node(self, node: Node) -> int:
        """Start another agent that joins at the next rendezvous round; its node index.

        Without its own ``fn`` the node runs the job's function.
        """
        with self._lock:
            if self.done:
                raise RuntimeError(f"job {self.run_id} has already {self.state}")
            reason = rules.check_can_add_node(self._state, self._plan.options.max_nodes)
            if reason:
                raise ValueError(reason)
            index = len(self._state.nodes)
            node_plan = plan_node(index, node, self._plan.default_payload)
            self._apply(rules.node_added(self._state, index, node_plan.nproc, node_plan.role,
                                         local=True, host="localhost", now=time.time()))
            self._start_agent(index, node_plan.nproc, node_plan.role, node_plan.payload)
        self._wake()
        return index

    def restart(self) -> None:
        """Stop the current workers and start a new attempt now (reason ``user``).

        A user restart does not use up the restart budget.
        """
        with self._lock:
            if self.done:
                raise RuntimeError(f"job {self.run_id} has already {self.state}")
            for index, node in self._state.nodes.items():
                if node.status.live:  # a starting node restarts once its workers are up
                    self._channels[index].send(CommandKind.RESTART, reason="user")

    def stacks(self, timeout: float = 5) -> dict[int, str]:
        """The live Python stack of every thread of every running rank.

        Each worker dumps its stacks (faulthandler) when signalled; a rank that
        does not answer within ``timeout`` maps to a line saying so.
        """
        with self._lock:
            targets = [stacks.StackTarget(w.rank, w.pid, w.rank_dir, w.node,
                                          self._state.nodes[w.node].local,
                                          self._state.nodes[w.node].host)
                       for _, w in sorted(self._state.workers.items())
                       if w.state.alive]
        return stacks.dump(targets, timeout)

    def debug_session(self, rank: int) -> DebugSession:
        """Connect to the debugger of a paused rank (``breakpoint()``, or post-mortem).

        Raises ValueError when the rank is not paused or runs on another
        machine, ``DebuggerBusy`` when another client has it.
        """
        with self._lock:
            worker = self._state.workers.get(rank)
            pause = worker.current_pause if worker is not None else None
            if worker is None or pause is None:
                paused = sorted(r for r, w in self._state.workers.items() if w.current_pause)
                state = worker.state if worker is not None else "not in this job"
                raise ValueError(
                    f"rank {rank} is not paused ({state}); paused ranks: {paused or 'none'}. "
                    "A rank pauses at breakpoint() or, with launch(post_mortem=True), where it "
                    "raised")
            node = self._state.nodes[worker.node]
            if not node.local:
                raise ValueError(f"rank {rank} runs on {node.host}: its debugger listens there, "
                                 f"at {pause.socket}")
        return DebugSession(rank, pause.socket, pause.reason)

    def debug(self, rank: int, read: Callable[[str], str] = input,
              write: Callable[[str], Any] = print) -> None:
        """Drive pdb in a paused rank from here: blocking, until the rank goes on or ends.

        Each command is read with ``read`` (``input``: in Jupyter the frontend
        asks for it) and pdb's answer is written with ``write``. ``c``
        resumes the rank, ``q`` makes it fail (its restart policy applies);
        an empty line or end of input leaves the session, which resumes it.
        """
        session = self.debug_session(rank)
        try:
            write(session.output.rstrip("\n"))
            while not session.ended:
                try:
                    command = read(PROMPT)
                except EOFError:
                    break
                output = session.send(command or "c")
                if output.strip():
                    write(output.rstrip("\n"))
        finally:
            session.close()
        write(f"[elastic_nb] {session.end_message}")

    def stop(self) -> None:
        """End the job now: each node stops its workers as torch does on SIGTERM.

        A node that does not stop within its shutdown timeout is killed; a
        local host that stopped cleanly may stay warm for the next launch.
        """
        with self._lock:
            self._apply(rules.stop_requested(self._state, time.time()))
            nodes = self._stopping_nodes()
        self._stop_nodes(nodes)
        with self._lock:
            self._apply(rules.finish(self._state, JobStatus.STOPPED, time.time()))
        if self._pump.is_alive() and threading.current_thread() is not self._pump:
            self._wake()
            self._pump.join()

    def _stopping_nodes(self) -> list[int]:
        """Nodes the state says to stop whose agents are still there."""
        return [i for i, n in self._state.nodes.items() if n.stopping and not n.gone]

    def _stop_nodes(self, nodes: list[int]) -> None:
        """Ask nodes to stop; kill a local one that does not, let go of a remote one."""
        grace = self._plan.options.shutdown_timeout + 2
        for index in nodes:
            try:
                self._channels[index].send(CommandKind.STOP, run_id=self.run_id)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        with self._changed:
            while (any(not self._state.nodes[i].gone for i in nodes)
                   and time.monotonic() < deadline):
                self._changed.wait(0.1)
            stuck = [i for i in nodes if not self._state.nodes[i].gone]
        for index in stuck:
            if index in self._agents:
                host_pool.POOL.discard(self._agents[index])  # the pump sees its channel end
            else:  # unresponsive: it stops when it loses us
                self._shutdown_channel(index)

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
                        self._register_accepted()
                    else:
                        self._read_node(key.data)
                self._tailer.poll()
                with self._lock:
                    if self.done:
                        self._reap_exited_agents()
                        if not any(k.data is not None for k in self._selector.get_map().values()):
                            break
        finally:
            self._tailer.retire_all()
            self._tailer.poll()
            self._close()

    def _register_accepted(self) -> None:
        while not self._accepted.empty():
            index, channel = self._accepted.get()
            self._selector.register(channel.socket, selectors.EVENT_READ, index)

    def _read_node(self, index: int) -> None:
        channel = self._channels[index]
        try:
            messages, ended = channel.receive_ready()
            reports = [parse_report(message) for message in messages]
        except ProtocolError as exc:
            self._protocol_error(index, exc)
            return
        except ConnectionError:
            reports, ended = [], True
        for report in reports:
            self._on_report(index, report)
        if ended:
            self._selector.unregister(channel.socket)
            self._on_node_gone(index)

    def _protocol_error(self, index: int, error: ProtocolError) -> None:
        """A node broke the protocol: an agent error for it; a joined node is dropped."""
        joined = index not in self._agents
        with self._lock:
            self._apply(rules.agent_error(self._state, index,
                                          f"node {index} sent a bad message: {error}",
                                          time.time(), drop=joined))
            if joined:
                self._restart_survivors(index)
        if joined:
            self._shutdown_channel(index)

    def _shutdown_channel(self, index: int) -> None:
        try:
            self._channels[index].socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _on_report(self, index: int, report: Report) -> None:
        now = time.time()
        with self._lock:
            if isinstance(report, NodeDone):
                self._host_done(index, report)
                return
            if isinstance(report, HostReady):
                self._host_ready(index)
                return
            if isinstance(report, Log):
                source = self._remote_sources.get((index, report.rank, report.stream,
                                                   report.attempt))
                if source is not None:
                    self._book.append(source, report.lines, now)  # our clock, not the node's
                return
            if isinstance(report, (Started, Restarting)):
                self._tailer.retire(lambda s: s.node == index)
            if isinstance(report, Started):
                sources = started_sources(index, report)
                if index in self._agents:
                    self._tailer.follow(sources)
                else:  # a joined node's files are on its machine: it sends their lines
                    self._remote_sources.update(
                        ((index, s.rank, s.stream, s.attempt), s) for s in sources)
            self._apply(rules.apply(self._state, index, report, now))

    def _host_done(self, index: int, report: NodeDone) -> None:
        """A local host finished its node of this job: the node is gone, the host goes back."""
        agent = self._agents[index]
        self._selector.unregister(agent.socket)
        self._on_node_gone(index, report.exitcode)
        node = self._state.nodes[index]
        if report.reusable and node.status != NodeStatus.KILLED:
            self._released.add(index)
            host_pool.POOL.release(agent, self._plan.keep_warm)
        else:
            host_pool.POOL.discard(agent)

    def _on_node_gone(self, index: int, returncode: int | None = None) -> None:
        """The node is over: its host said so, or its channel closed (exited, killed, crashed)."""
        agent = self._agents.get(index)
        if agent is not None and returncode is None:
            returncode = agent.returncode()
            host_pool.POOL.discard(agent)
        where = (f"see {self.log_dir}/node_{index}/agent.log" if agent is not None
                 else f"on {self._state.nodes[index].host}")
        with self._lock:
            self._held.pop(index, None)
            self._host_ready(index)  # a host that died booting holds the others no longer
            self._tailer.retire(lambda s: s.node == index)
            self._apply(rules.node_gone(self._state, index, returncode, time.time(), where))
            if self._state.nodes[index].status == NodeStatus.LOST:
                self._restart_survivors(index)

    def _restart_survivors(self, lost: int) -> None:
        """Node ``lost`` is gone: the others re-form the world now (a membership restart)."""
        for index in rules.survivors(self._state, lost):
            try:
                self._channels[index].send(CommandKind.RESTART, reason="membership")
            except OSError:
                pass  # that node is going too; its own loss is handled when its channel closes

    def _reap_exited_agents(self) -> None:
        for index, agent in self._agents.items():
            if agent.alive():
                continue
            try:
                self._selector.unregister(agent.socket)
            except (KeyError, ValueError):
                continue
            self._on_node_gone(index)

    def _apply(self, events: list[Event]) -> None:
        """Tell listeners and waiters of new events; act on the job's end."""
        for event in events:
            for listener in list(self._listeners):
                listener(event)
            if event.kind == EventKind.FAILED:
                self._stop_remaining_nodes()
            elif event.kind == EventKind.SUCCEEDED:
                self._end_exit_barrier_waits()
        if events:
            self._changed.notify_all()
            if self.done:
                self._wake()

    def _stop_remaining_nodes(self) -> None:
        """A failed job ends promptly: stop the nodes still running, off the pump thread."""
        nodes = self._stopping_nodes()
        if nodes:
            def stop_them() -> None:
                self._stop_nodes(nodes)
                self._wake()

            threading.Thread(target=stop_them, name="elastic_nb-stop", daemon=True).start()

    def _end_exit_barrier_waits(self) -> None:
        """Every node reported success: an agent still there after a grace waits in torch's
        exit barrier for a peer that was lost, and is stopped instead of waiting it out."""
        def end_them() -> None:
            deadline = time.monotonic() + _EXIT_BARRIER_GRACE
            while True:
                with self._lock:
                    left = [i for i, n in self._state.nodes.items() if not n.gone]
                if not left:
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self._stop_nodes(left)
            self._wake()

        threading.Thread(target=end_them, name="elastic_nb-exit-barrier", daemon=True).start()

    def _close(self) -> None:
        with self._lock:
            for index, channel in self._channels.items():
                if index not in self._released:  # a released host's channel is the pool's now
                    channel.close()
            self._join_server.close()
            self._selector.close()
            self._wakeup_r.close()
            self._wakeup_w.close()
            self._store = None
            _live_jobs.discard(self)
            self._changed.notify_all()

    # ------------------------------------------------------------- display

    def summary(self) -> str:
        """A readable text summary (what a terminal or nbconvert shows)."""
        return summary_text(self.snapshot())

    def __repr__(self) -> str:
        return self.summary()

    def show(self) -> None:
        """Display the live dashboard (the text summary outside a Jupyter kernel)."""
        from elastic_nb import widgets

        widgets.show(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from elastic_nb import widgets

        return widgets.mimebundle(self, include, exclude)
