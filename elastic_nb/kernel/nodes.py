"""Node handles: how the kernel reaches one node of a job, whatever kind of node it is.

``NodeHandle`` is the small contract every kind of node fills in, as dask's
``Cluster`` subclasses do: its channel, and how to signal one of its
workers, kill it, give up on it, route its log lines, ask its ranks for
their stacks or hang answers, open a rank's debugger, and what to say when
it is gone. The Job and its pump call these and never ask which kind a node
is.

* ``LocalNode``: a node host on this machine (``supervisor.AgentProcess``,
  warm from ``host_pool`` or started for it). Its configuration may be held
  until every host launched with it is up (``LaunchGate``); its files are
  read here (``wire.rank_probe``), and its ranks' debuggers reached here;
  killing it kills its process group.
* ``JoinedNode``: a node host on another machine that joined through the
  join server; everything goes through its channel: its lines arrive as
  ``Log`` reports, its host asks its ranks when the Job asks it
  (``DumpStacks``, ``AskHang``: ``kernel.asking``) and relays a pdb session
  to a paused rank (``kernel.debug_relay``).
* ``kernel.scheduled.ScheduledNode``: a joined node the notebook started
  itself (Slurm, ssh), queued without a channel until it joins.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
from abc import ABC, abstractmethod

import psutil

from elastic_nb.kernel import host_pool
from elastic_nb.kernel.asking import Asked, Requests
from elastic_nb.kernel.debug_client import DebugSession
from elastic_nb.kernel.debug_relay import DebugRelay
from elastic_nb.kernel.log_book import JobLogs
from elastic_nb.kernel.supervisor import AgentProcess, agent_environment, send_signal, signal_group
from elastic_nb.model.plan import JobPlan
from elastic_nb.rendezvous import network
from elastic_nb.wire import rank_probe
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.commands import AskHang, Command, Configure, DebugOpen, DumpStacks, Freeze, Kill, Signal
from elastic_nb.wire.config import AgentConfig
from elastic_nb.wire.logfiles import LogSource
from elastic_nb.wire.rank_files import RankAnswer, RankTarget
from elastic_nb.wire.reports import DebugEnded, DebugOutput, HangAnswers, Log, NodeDone, Paused, Report, Stacks


class NodeHandle(ABC):
    """One node of a job as the kernel reaches it.

    ``send`` a command; ``signal`` one of its workers; ``kill`` it (a machine
    lost); ``abandon`` it when it does not stop in time; ``follow`` the log
    sources of a new attempt and take ``lines`` it sends; ``finished`` (its
    host's last report), ``gone`` (its channel closed) and ``exited`` (its
    process ended unseen); ``ask_stacks`` and ``ask_hang`` of some of its
    running ranks (an ``Asked`` to wait on: never blocking the caller),
    ``answered`` (a report that answers one of those, or carries a relayed
    debug session), ``debug_session`` of a paused rank; ``close`` its
    channel. ``booting`` and ``send_config`` serve the launch gate;
    ``drop_on_protocol_error`` says whether a node that breaks the protocol
    is dropped (the job goes on) or fails the job.
    """

    drop_on_protocol_error = False

    def __init__(self, index: int, channel: Channel | None) -> None:
        self.index = index
        self.channel = channel  # None until a node started elsewhere joins
        self.booting = False  # its host has not said it is up (HostReady)

    @property
    def wire(self) -> Channel:
        """The channel of a node the pump watches (every node it watches has one)."""
        assert self.channel is not None, f"node {self.index} has no channel yet"
        return self.channel

    def send(self, command: Command) -> bool:
        """Send a command; False if the channel is already gone (its loss is seen by the pump),
        or not there yet."""
        if self.channel is None:
            return False
        try:
            self.channel.send(command)
        except OSError:
            return False
        return True

    def send_config(self) -> None:
        """Send the configuration held for the launch gate (none is held by default)."""
        return None

    def host_ready(self) -> None:
        self.booting = False

    def held(self) -> bool:
        """Up, and waiting for its configuration at the launch gate (it has nothing to say)."""
        return False

    def stopped(self) -> bool:
        """Its process is seen stopped (SIGSTOP) from here (only a local process can be)."""
        return False

    @abstractmethod
    def signal(self, pid: int, signum: signal.Signals) -> None: ...

    @abstractmethod
    def kill(self) -> None:
        """End the whole node now, workers included: a machine lost."""

    @abstractmethod
    def abandon(self) -> None:
        """The node did not stop when asked: end it, or let go of it."""

    @abstractmethod
    def fence(self) -> None:
        """The node went silent and is lost: make sure nothing of it acts on the job again
        (a frozen process killed, a joined node told to leave and cut off)."""

    @abstractmethod
    def freeze(self, frozen: bool, worker_pids: list[int]) -> None:
        """Stop (or continue) the whole node, as a machine that freezes: it goes silent."""

    @abstractmethod
    def follow(self, sources: list[LogSource], logs: JobLogs) -> None:
        """A new attempt's log sources: where its lines will come from."""

    def lines(self, report: Log, logs: JobLogs, now: float) -> None:
        """Lines the node sent (only a node whose files are elsewhere sends any)."""
        return None

    def finished(self, report: NodeDone, keep_warm: float, killed: bool) -> None:
        """Its host's last report of the job (only a host the Job runs sends one)."""
        return None

    @abstractmethod
    def gone(self, returncode: int | None) -> tuple[int | None, str]:
        """Its channel closed: its exit code (if known) and where to look for why."""

    def exited(self) -> bool:
        """Its process ended without its channel saying so (only a local process can)."""
        return False

    @abstractmethod
    def debug_session(self, rank: int, pause: Paused) -> DebugSession:
        """A pdb session on the paused rank (blocking until its debugger answers)."""

    @abstractmethod
    def ask_stacks(self, targets: list[RankTarget], timeout: float) -> Asked[str]:
        """Every thread's stack of these running ranks, each within ``timeout`` (or why not)."""

    @abstractmethod
    def ask_hang(self, targets: list[RankTarget], timeout: float) -> Asked[RankAnswer]:
        """These running ranks' answers to the hang map, each within ``timeout`` (or why not)."""

    def answered(self, report: Report) -> None:
        """A reply to what it was asked (only a host that asks its own ranks sends any)."""
        return None

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


class LocalNode(NodeHandle):
    """A node host on this machine, warm from the pool or started for this node."""

    def __init__(self, index: int, agent: AgentProcess, config: AgentConfig, warm: bool) -> None:
        super().__init__(index, Channel(agent.socket))
        self.agent = agent
        self.node_dir = config.log_dir
        self.warm = warm
        self.booting = not warm
        self._config: AgentConfig | None = config  # held until the launch gate opens
        self._released = False  # its host went back to the pool: the channel is the pool's

    @classmethod
    def start(cls, plan: JobPlan, index: int, nproc: int, role: str, payload: bytes,
              endpoint: str, above_pid: int, key: str) -> LocalNode:
        """A host for node ``index``: an idle warm one with a pid above ``above_pid`` (torch
        ranks one machine's nodes by agent pid), or a new one. ``key``: the job's, with
        which the host signs and checks the rendezvous state (on its private channel)."""
        node_dir = os.path.join(plan.log_dir, f"node_{index}")
        address = network.advertised_address(plan.listen_addr)
        sockets = network.socket_env(address, plan.env, os.environ)
        env = agent_environment(plan.run_id, plan.world_size, {**plan.env, **sockets})
        agent = host_pool.POOL.acquire(plan.run_id, above_pid=above_pid)
        warm = agent is not None
        if agent is None:
            agent = AgentProcess.start(node_dir, env, plan.options.start_method)
            host_pool.POOL.register(agent, plan.run_id)
        config = AgentConfig(
            node=index, role=role, nproc=nproc, payload=payload, run_id=plan.run_id,
            backend=plan.backend, endpoint=endpoint, options=plan.options, log_dir=node_dir,
            local_addr=address, env=env, sys_path=[p for p in sys.path if p], cwd=os.getcwd(),
            key=key)
        return cls(index, agent, config, warm)

    @property
    def pid(self) -> int:
        return self.agent.pid

    def held(self) -> bool:
        return self._config is not None and not self.booting

    def stopped(self) -> bool:
        try:
            return psutil.Process(self.agent.pid).status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return False

    def send_config(self) -> None:
        config, self._config = self._config, None
        if config is not None:
            self.send(Configure(config))

    def signal(self, pid: int, signum: signal.Signals) -> None:
        send_signal(pid, signum)

    def kill(self) -> None:
        host_pool.POOL.discard(self.agent)  # the host dies with its node

    def abandon(self) -> None:
        host_pool.POOL.discard(self.agent)  # the pump sees its channel end

    def fence(self) -> None:
        host_pool.POOL.discard(self.agent)  # SIGKILL ends a stopped process too

    def freeze(self, frozen: bool, worker_pids: list[int]) -> None:
        sig = signal.SIGSTOP if frozen else signal.SIGCONT
        signal_group(self.agent.pid, sig)  # the host, its forkserver and its workers
        for pid in worker_pids:
            send_signal(pid, sig)

    def follow(self, sources: list[LogSource], logs: JobLogs) -> None:
        logs.follow_files(sources)

    def finished(self, report: NodeDone, keep_warm: float, killed: bool) -> None:
        if report.reusable and not killed:
            self._released = True
            host_pool.POOL.release(self.agent, keep_warm)
        else:
            host_pool.POOL.discard(self.agent)

    def gone(self, returncode: int | None) -> tuple[int | None, str]:
        self._config = None
        self.booting = False  # a host that died booting holds the others no longer
        if returncode is None:
            returncode = self.agent.returncode()
            host_pool.POOL.discard(self.agent)
        return returncode, f"see {self.node_dir}/agent.log"

    def exited(self) -> bool:
        return not self.agent.alive()

    def debug_session(self, rank: int, pause: Paused) -> DebugSession:
        return DebugSession.connect(rank, pause.socket, pause.reason)

    def ask_stacks(self, targets: list[RankTarget], timeout: float) -> Asked[str]:
        return Asked.in_background([t.rank for t in targets], lambda rank, why: f"rank {rank}: {why}",
                                   lambda: rank_probe.dump_stacks(targets, timeout),
                                   f"elastic_nb-stacks-{self.index}")

    def ask_hang(self, targets: list[RankTarget], timeout: float) -> Asked[RankAnswer]:
        return Asked.in_background([t.rank for t in targets],
                                   lambda rank, why: RankAnswer(rank, "silent", note=why),
                                   lambda: rank_probe.ask_hang(targets, timeout),
                                   f"elastic_nb-hang-{self.index}")

    def close(self) -> None:
        if not self._released:
            self.wire.close()


class JoinedNode(NodeHandle):
    """A node host on another machine, reached only through its channel."""

    drop_on_protocol_error = True  # a peer that misbehaves is dropped; the job goes on

    def __init__(self, index: int, channel: Channel | None, host: str) -> None:
        super().__init__(index, channel)
        self.host = host
        self._requests = Requests()
        self._lock = threading.Lock()
        self._sessions = itertools.count(1)
        self._relays: dict[int, DebugRelay] = {}
        self._closed: str | None = None  # its channel closed: why a new session cannot open

    def signal(self, pid: int, signum: signal.Signals) -> None:
        self.send(Signal(pid=pid, signal=signum.name))

    def kill(self) -> None:
        self.send(Kill())

    def abandon(self) -> None:
        if self.channel is not None:
            self.channel.shutdown()  # unresponsive: it stops when it loses us

    def fence(self) -> None:
        if self.channel is not None:  # its late reports are never read; it leaves at the end
            self.channel.shutdown()

    def freeze(self, frozen: bool, worker_pids: list[int]) -> None:
        self.send(Freeze(frozen=frozen))

    def follow(self, sources: list[LogSource], logs: JobLogs) -> None:
        logs.expect_lines(sources)

    def lines(self, report: Log, logs: JobLogs, now: float) -> None:
        logs.received(self.index, report, now)

    def gone(self, returncode: int | None) -> tuple[int | None, str]:
        """Its channel closed: what it was asked gets no answer, its relayed sessions end."""
        why = f"the channel of node {self.index} ({self.host}) closed"
        self._requests.close("its channel closed before it answered")
        with self._lock:
            self._closed = why
            relays, self._relays = list(self._relays.values()), {}
        for relay in relays:
            relay.ended(why)
        return returncode, f"on {self.host}"

    def ask_stacks(self, targets: list[RankTarget], timeout: float) -> Asked[str]:
        number, asked = self._requests.add(
            [t.rank for t in targets],
            lambda rank, why: f"rank {rank} runs on node {self.index}, joined from {self.host}: {why}")
        if not self.send(DumpStacks(request=number, ranks=tuple(targets), timeout=timeout)):
            asked.fail("its channel closed before it was asked")
        return asked

    def ask_hang(self, targets: list[RankTarget], timeout: float) -> Asked[RankAnswer]:
        number, asked = self._requests.add(
            [t.rank for t in targets],
            lambda rank, why: RankAnswer(rank, "silent", note=f"node {self.index} on {self.host}: {why}"))
        if not self.send(AskHang(request=number, ranks=tuple(targets), timeout=timeout)):
            asked.fail("its channel closed before it was asked")
        return asked

    def answered(self, report: Report) -> None:
        """Its host's answer to a request, or a relayed session's output or end (from the pump:
        each is handed over, nothing waits here)."""
        if isinstance(report, Stacks):
            self._requests.answered(report.request, report.stacks)
        elif isinstance(report, HangAnswers):
            self._requests.answered(report.request, {a.rank: a for a in report.answers})
        elif isinstance(report, DebugOutput):
            with self._lock:
                relay = self._relays.get(report.session)
            if relay is not None:  # else a session already over
                relay.output(report.data)
        elif isinstance(report, DebugEnded):
            with self._lock:
                relay = self._relays.pop(report.session, None)
            if relay is not None:
                relay.ended(report.error)

    def debug_session(self, rank: int, pause: Paused) -> DebugSession:
        """Its host connects to the rank's debugger there and relays it through the channel."""
        with self._lock:
            relay = DebugRelay(next(self._sessions), self.send)
            closed = self._closed
            if closed is None:
                self._relays[relay.number] = relay
        if closed is not None:
            relay.ended(closed)
        elif not self.send(DebugOpen(session=relay.number, rank=rank, socket=pause.socket)):
            relay.ended(f"the channel of node {self.index} ({self.host}) closed")
        return relay.session(rank, pause.reason)


class LaunchGate:
    """Nodes launched together get their configurations only once every new host is up.

    A warm host configured at once would form a smaller world with the nodes
    already there, then restart to take in the late ones.
    """

    def __init__(self, nodes: dict[int, NodeHandle]) -> None:
        self._nodes = nodes

    def open_if_ready(self) -> None:
        if not any(n.booting for n in self._nodes.values()):
            for node in self._nodes.values():
                node.send_config()

    def host_ready(self, index: int) -> None:
        self._nodes[index].host_ready()
        self.open_if_ready()
