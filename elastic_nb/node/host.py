"""The node host: an agent process that runs one job's node after another.

Each local node runs in a host process of its own session and process group,
started by the Job (``kernel.supervisor.AgentProcess.start``) with one end of
a socketpair as FD. Each ``Configure`` command on it is one job's
``AgentConfig``; the host runs a ``ReportingAgent`` for it and answers
``NodeDone`` when that job's node is over, then waits for the next job (the
kernel's host pool decides how long it stays warm). One thread reads the
commands (``wire.commands``) throughout and acts at once; what waits (asking
its ranks for their stacks or hang answers, ``wire.rank_probe``, and the
pdb sessions it relays, ``debug_relay``) runs on threads of its own and
answers with a report. When the Job's end
closes (the kernel died), a local host kills its whole process group,
workers and forkserver included. A node that joined from another machine
runs one job (``NodeHost.run``) and exits; it may ``leave`` on its own.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from torch.distributed.elastic.agent.server.api import WorkerSpec
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.rendezvous import registry as rdzv_registry

from elastic_nb.compat import torch_compat
from elastic_nb.model import losses
from elastic_nb.node.agent import (
    ReportingAgent,
    failure_report,
    prepare_process,
    quiet_failure_logs,
    rendezvous_parameters,
)
from elastic_nb.node.debug_relay import DebugRelays
from elastic_nb.node.forwarder import LogForwarder
from elastic_nb.node.leaving import leave_now
from elastic_nb.node.link import JobLink
from elastic_nb.node.logs_spec import NodeLogsSpecs
from elastic_nb.node.straggler import Stragglers
from elastic_nb.rendezvous import register_backends
from elastic_nb.rendezvous.signed import signed_handler
from elastic_nb.wire import rank_probe
from elastic_nb.wire import reports as protocol
from elastic_nb.wire.channel import Channel
from elastic_nb.wire.commands import (
    AskHang,
    CommandKind,
    Configure,
    DumpStacks,
    Freeze,
    Heartbeat,
    Kill,
    Restart,
    Signal,
    Slow,
    Stop,
    parse_command,
)
from elastic_nb.wire.config import AgentConfig, JobContext
from elastic_nb.wire.rank_files import RankAnswer, RankTarget
from elastic_nb.wire.records import ProtocolError
from elastic_nb.worker import trampoline

_AGENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
LEAVE_GRACE = 10.0  # seconds a leaving node waits for the Job's stop (Slurm warns 60 s ahead)


class NodeHost:
    """An agent process: runs the node of one job after another, and the Job's commands.

    ``serve`` (a local host) takes each job's ``AgentConfig`` from the channel
    and runs it with ``run``; between jobs it keeps what is expensive: this
    interpreter with torch imported, and the forkserver workers fork from.
    Each job still gets its own environment, sys.path and cwd (the kernel's),
    agent log, ``ReportingAgent``, rendezvous handler and workers. A node
    joined from another machine runs one job (``run``) and exits, or ``leave``-s early
    (its scheduler's warning).

    One thread reads the channel throughout: configurations queue for the
    main thread; commands act at once, and what waits (``_dump_stacks`` and
    ``_ask_hang`` of its ranks, the pdb sessions it relays) answers from a
    thread of its own. When the Job's end closes (the kernel died), a local
    host kills its whole process group, workers included.
    """

    def __init__(self, channel: Channel, local: bool) -> None:
        self._channel = channel
        self._link = JobLink(channel)
        self._local = local
        peer = channel.socket.getpeername() if not local else ("", "")
        self._job_address = f"{peer[0]}:{peer[1]}"
        self._stragglers = Stragglers()
        self._debug = DebugRelays(self._link.send)
        # the host's own path beneath each job's: not the PYTHONPATH the first job started it with
        started_with = set(os.environ.get("PYTHONPATH", "").split(os.pathsep))
        self._own_path = [p for p in sys.path if p not in started_with]
        self._configs: queue.SimpleQueue[AgentConfig | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._agent: ReportingAgent | None = None
        self._job: str | None = None  # the run id of the job this host was last given
        self._in_run = False  # inside agent.run(): a SIGTERM there stops the job as torch does
        self._stop_requested = False
        self._stopped_at: float | None = None  # when the Job's stop reached the running job
        self._reusable = True
        self._left = False  # it left on its scheduler's warning (``leave``)
        threading.Thread(target=self._listen, name="elastic_nb-commands", daemon=True).start()

    def serve(self) -> int:
        """Run jobs as the Job sends them, until it goes or a job leaves this host unusable."""
        signal.signal(signal.SIGTERM, torch_compat.terminate_process_handler)
        quiet_failure_logs()
        self._link.send(protocol.HostReady(pid=os.getpid()))
        while True:
            try:
                config = self._configs.get()
            except SignalException:
                return 0  # SIGTERM while idle: nothing to stop
            if config is None:
                return 0
            try:
                exitcode, reusable = self.run(config), self._reusable
            except SignalException:  # a stop that landed as torch's run returned: leave
                exitcode, reusable = 1, False
            self._link.send(protocol.NodeDone(exitcode=exitcode, reusable=reusable))
            if not reusable:
                return exitcode

    def run(self, config: AgentConfig) -> int:
        """Run one node of a job to completion, reporting to the Job; its exit code.

        What torch's agent changes in the process for a job (the signal handlers
        of ``_invoke_run``) is put back afterwards: the next job on this host
        starts from the state the host started in.
        """
        handlers = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS}
        self._link.start(config.options.liveness_timeout,
                         on_lost=None if self._local else self._lost_contact)
        try:
            return self._run(config)
        finally:
            self._link.stop()
            self._stragglers.stop_all()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _run(self, config: AgentConfig) -> int:
        self._reusable = True
        with self._lock:
            self._job = config.run_id
        _enter_job(config, self._own_path)
        prepare_process(config)
        try:
            register_backends()
            handler = self._rendezvous_handler(config)
        except Exception as exc:
            self._link.send(protocol.AgentError(_describe(exc, config), traceback.format_exc()))
            return 1
        agent = self._make_agent(config, handler)
        forwarder = agent.forwarder
        shutdown_rendezvous = True
        with self._lock:
            if self._stop_requested:  # stopped before it began
                self._stop_requested = False
                if forwarder is not None:
                    forwarder.close()
                return 1
            self._agent, self._in_run = agent, True
        try:
            result = agent.run()
        except SignalException:
            # As torchrun: a node stopped by a signal leaves the rendezvous open for the others.
            shutdown_rendezvous = False
            failed = agent.failed_before(self._stopped_at) if self._stopped_at is not None else ()
            if failed:  # ranks that failed as the Job's stop (for another node's failure) came
                self._link.send(protocol.Failed(failures=failed))
            return 0 if self._left else 1
        except Exception as exc:
            self._link.send(protocol.AgentError(_describe(exc, config), traceback.format_exc()))
            return 1
        finally:
            with self._lock:
                self._agent, self._in_run, self._stop_requested = None, False, False
                self._stopped_at = None
            if shutdown_rendezvous:
                handler.shutdown()
            else:
                self._reusable = torch_compat.stop_heartbeats(handler)
            if forwarder is not None:
                forwarder.close()
        if result is None:
            self._link.send(protocol.AgentError(
                "this node was not admitted to the rendezvous (the world is full)", None))
            return 1
        if result.is_failed():
            self._link.send(protocol.Failed(failures=tuple(
                failure_report(rank, f, agent.restart_count, agent.stderr_file(f.local_rank))
                for rank, f in sorted(result.failures.items()))))
            return 1
        return 0  # the agent reported its results before the exit barrier

    def _rendezvous_handler(self, config: AgentConfig) -> Any:
        """torch's handler for the job's backend; with the job's key and unless the job trusts
        its store, one whose state is signed (``rendezvous.signed``): a forgery is reported."""
        params = rendezvous_parameters(config)
        if config.key is None or config.options.trust_store:
            return rdzv_registry.get_rendezvous_handler(params)
        return signed_handler(params, config.key,
                              lambda where: self._link.send(protocol.StateForged(where=where)))

    def _make_agent(self, config: AgentConfig, handler: Any) -> ReportingAgent:
        options = config.options
        spec = WorkerSpec(
            role=config.role,
            local_world_size=config.nproc,
            entrypoint=trampoline.run_worker,
            args=(config.payload, JobContext.of_this_process(options)),
            rdzv_handler=handler,
            max_restarts=options.max_restarts,
            monitor_interval=options.monitor_interval,
            master_addr=options.master_addr,
            master_port=options.master_port,
            local_addr=config.local_addr,
        )
        return ReportingAgent(
            spec,
            NodeLogsSpecs(config.log_dir, tee=config.tee),
            self._link,
            config.node,
            LogForwarder(self._link) if config.tee else None,
            start_method=options.start_method,
            exit_barrier_timeout=options.exit_barrier_timeout,
            log_line_prefix_template=options.log_line_prefix_template if config.tee else None,
            shutdown_timeout=options.shutdown_timeout,
            hold_window=losses.hold_window(options.liveness_timeout),
        )

    def _stop(self, run_id: str | None = None) -> None:
        """Stop the job running here as torch stops on SIGTERM; the host stays.

        ``run_id`` names the job to stop: a stop that crossed the end of that
        job on the wire must not stop the next one.
        """
        with self._lock:
            if run_id is not None and run_id != self._job:
                return
            if self._in_run:
                if self._stopped_at is None:
                    self._stopped_at = time.time()
                os.kill(os.getpid(), signal.SIGTERM)  # torch stops the workers, then returns
            else:
                self._stop_requested = True

    def _listen(self) -> None:
        """Read commands until the Job's end closes; act on each at once."""
        while True:
            try:
                message = self._channel.receive()
                command = None if message is None else parse_command(message)
            except (OSError, ProtocolError) as exc:
                print(f"elastic_nb: the Job's channel broke ({exc}); leaving", file=sys.stderr,
                      flush=True)
                command = None
            if command is None:
                self._lost_the_job()
                return
            self._link.heard()
            self._COMMANDS[command.kind](self, command)

    def leave(self, reason: str) -> None:
        """Leave the job on this node's own account (its scheduler's warning): tell the Job,
        which restarts the others first and then stops this node; if its stop does not come
        within ``LEAVE_GRACE``, stop anyway. A node that left exits 0."""
        self._left = True
        self._link.send(protocol.Leaving(reason=reason))
        timer = threading.Timer(LEAVE_GRACE, self._stop)
        timer.daemon = True
        timer.start()

    def _lost_contact(self, silent: float) -> None:
        """A joined node heard nothing from the Job for its liveness timeout: it leaves."""
        self._leave_lost(f"lost contact with the job at {self._job_address} after {silent:.1f} s")

    def _lost_the_job(self) -> None:
        """The Job's end closed (the kernel died, let go of this node, or fenced it)."""
        if self._local:  # nothing of a local host may outlive the kernel
            os.killpg(os.getpgid(0), signal.SIGKILL)
        self._leave_lost(f"the job at {self._job_address} closed this node's channel")

    def _leave_lost(self, why: str) -> None:
        """A joined node without its Job leaves now, never through the rendezvous store (it may
        be cut off too): its workers stopped (SIGTERM, SIGKILL after shutdown_timeout), then
        this process, non-zero unless its ranks had all returned (``node.leaving``)."""
        with self._lock:
            agent = self._agent
        if agent is None:  # no run in progress: none starts now, and one that ended exits
            self._stop()
            return
        print(f"elastic_nb: {why}; stopping this node's workers and leaving", file=sys.stderr,
              flush=True)
        leave_now(agent.shutdown_grace, 0 if agent.succeeded or self._left else 1)

    def _configure(self, command: Configure) -> None:
        with self._lock:
            self._job, self._stop_requested = command.config.run_id, False
        self._configs.put(command.config)

    def _kill(self, command: Kill) -> None:
        os.killpg(os.getpgid(0), signal.SIGKILL)

    def _stop_command(self, command: Stop) -> None:
        self._stop(command.run_id)

    def _restart(self, command: Restart) -> None:
        with self._lock:
            agent = self._agent
        if agent is not None:  # between jobs: a command for a job that is over
            agent.request_restart(command.reason)

    def _signal(self, command: Signal) -> None:
        if command.pid in self._worker_pids():
            os.kill(command.pid, signal.Signals[command.signal])

    def _heartbeat(self, command: Heartbeat) -> None:
        return None  # heard (``_listen``): that is all a heartbeat says

    def _slow(self, command: Slow) -> None:
        if command.pid in self._worker_pids():
            self._stragglers.slow(command.pid, command.fraction)

    def _freeze(self, command: Freeze) -> None:
        """Freeze: the workers stop and the host goes silent, as a frozen machine does (its
        command thread stays, so that a thaw can reach it)."""
        self._link.freeze(command.frozen)
        for pid in self._worker_pids():
            os.kill(pid, signal.SIGSTOP if command.frozen else signal.SIGCONT)

    def _dump_stacks(self, command: DumpStacks) -> None:
        """The Job asks for stacks of ranks here: dumped as the kernel dumps its own."""
        ours, others = self._own(command.ranks)

        def answer() -> None:
            stacks = {t.rank: f"rank {t.rank} (pid {t.pid}) is not a worker of this node now"
                      for t in others}
            stacks.update(rank_probe.dump_stacks(ours, command.timeout))
            self._link.send(protocol.Stacks(request=command.request, stacks=stacks))

        threading.Thread(target=answer, name="elastic_nb-stacks", daemon=True).start()

    def _ask_hang(self, command: AskHang) -> None:
        """The Job asks ranks here for their hang answers: asked as the kernel asks its own."""
        ours, others = self._own(command.ranks)

        def answer() -> None:
            answers = {t.rank: RankAnswer(t.rank, "gone", note=f"pid {t.pid} is not a worker of "
                                                                "this node now") for t in others}
            answers.update(rank_probe.ask_hang(ours, command.timeout))
            self._link.send(protocol.HangAnswers(request=command.request,
                                                 answers=tuple(answers.values())))

        threading.Thread(target=answer, name="elastic_nb-hang", daemon=True).start()

    def _own(self, targets: tuple[RankTarget, ...]) -> tuple[list[RankTarget], list[RankTarget]]:
        """The targets that are this node's workers, and the others (never signalled)."""
        pids = self._worker_pids()
        return [t for t in targets if t.pid in pids], [t for t in targets if t.pid not in pids]

    def _worker_pids(self) -> set[int]:
        with self._lock:
            agent = self._agent
        return agent.worker_pids() if agent is not None else set()

    _COMMANDS: dict[CommandKind, Callable[[NodeHost, Any], None]] = {
        CommandKind.CONFIGURE: _configure,
        CommandKind.KILL: _kill,
        CommandKind.STOP: _stop_command,
        CommandKind.RESTART: _restart,
        CommandKind.SIGNAL: _signal,
        CommandKind.HEARTBEAT: _heartbeat,
        CommandKind.SLOW: _slow,
        CommandKind.FREEZE: _freeze,
        CommandKind.DUMP_STACKS: _dump_stacks,
        CommandKind.ASK_HANG: _ask_hang,
        CommandKind.DEBUG_OPEN: lambda host, command: host._debug.open(command),
        CommandKind.DEBUG_INPUT: lambda host, command: host._debug.input(command),
        CommandKind.DEBUG_CLOSE: lambda host, command: host._debug.close(command),
    }
    """How the host acts on each command (every kind of ``wire.commands``)."""


def _enter_job(config: AgentConfig, own_path: list[str]) -> None:
    """Take on the kernel's environment, sys.path (over the host's own, never an earlier
    job's) and cwd, and the job's agent log."""
    if config.env is not None:
        os.environ.clear()
        os.environ.update(config.env)
    if config.sys_path is not None:
        sys.path[:] = list(dict.fromkeys(config.sys_path + own_path))
    if config.cwd is not None:
        os.chdir(config.cwd)
    if not config.tee:  # a local node: torch's agent log goes to the job's node directory
        os.makedirs(config.log_dir, exist_ok=True)
        fd = os.open(os.path.join(config.log_dir, "agent.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def _describe(exc: BaseException, config: AgentConfig) -> str:
    return (f"node {config.node} ({config.backend} rendezvous at {config.endpoint}): "
            f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd = int(argv[0])
    os.set_inheritable(fd, False)  # workers must not hold the Job's channel open
    return NodeHost(Channel(socket.socket(fileno=fd)), local=True).serve()


if __name__ == "__main__":
    sys.exit(main())
