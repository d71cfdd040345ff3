"""Agent process main: a node host, running one node of a job after another.

Each node runs in a host process of its own session and process group: a
real torch ``LocalElasticAgent`` whose only additions are reports to the Job
(rendezvous result, ranks and pids per attempt, worker failures, restarts,
final results) and a ``restart`` command. Rendezvous, restart policy, error
files and shutdown are torch's.

Started by the Job (``supervisor.AgentProcess.start``) with one end of a
socketpair as FD; each ``CONFIGURE`` on it is one job's ``AgentConfig``, and
``NODE_DONE`` answers when that job's node is over. The host then waits for
the next job (the kernel's host pool decides how long it stays warm). When
the Job's end closes (the kernel died), the host kills its whole process
group, workers and forkserver included.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any

from torch.distributed.elastic.agent.server.api import (
    _TERMINAL_STATE_SYNC_ID,
    RunResult,
    WorkerGroup,
    WorkerSpec,
    WorkerState,
)
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing import api as torch_mp_api
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import registry as rdzv_registry
from torch.distributed.elastic.utils.store import _NUM_MEMBERS

from elastic_nb import payload, protocol, rank_debugger
from elastic_nb.heartbeat import RoundSeen, peers_lost, silent_peers
from elastic_nb.logs import LogSource, LogTailer, NodeLogsSpecs, started_sources
from elastic_nb.protocol import AgentConfig, Channel, CommandKind
from elastic_nb.rendezvous import register_backends

_FAILED_STATES = (WorkerState.FAILED, WorkerState.UNHEALTHY)
# the counter torch's exit barrier (store_util.barrier) adds each node to, in the round's store
_EXIT_BARRIER_MEMBERS = f"{_TERMINAL_STATE_SYNC_ID}{_NUM_MEMBERS}"


def failure_report(rank: int, failure: ProcessFailure, restart_count: int) -> protocol.FailureReport:
    """A worker failure as plain data: torch's error file, or what the exit code tells."""
    data = failure.error_file_data or {}
    message = data.get("message")
    trace = None
    if isinstance(message, dict):
        trace = message.get("extraInfo", {}).get("py_callstack")
        message = message.get("message")
    signal_name = failure.signal_name() if failure.exitcode < 0 else None
    if not message or failure.error_file == "<N/A>":
        if signal_name:
            message = f"killed by {signal_name} (pid {failure.pid})"
        else:
            message = (
                f"exited with code {failure.exitcode} without an error report "
                "(os._exit, sys.exit or a crash outside Python)"
            )
    return protocol.FailureReport(
        rank=rank, local_rank=failure.local_rank, pid=failure.pid, exitcode=failure.exitcode,
        signal=signal_name, message=str(message), traceback=trace,
        timestamp=float(failure.timestamp), restart_count=restart_count)


class LogForwarder:
    """Sends the lines a joined node's ranks print to the Job, a few batches a second.

    A local node's files are read by the Job itself; a node that joined from
    another machine tails its own files (they also print in its terminal).
    """

    INTERVAL = 0.1

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._tailer = LogTailer(self)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="elastic_nb-log-forwarder",
                                        daemon=True)
        self._thread.start()

    def append(self, source: LogSource, texts: Iterable[str], when: float) -> None:
        self._channel.send_report(protocol.Log(rank=source.rank, stream=source.stream,
                                               attempt=source.attempt, lines=tuple(texts)))

    def follow(self, sources: list[LogSource]) -> None:
        """Forward these files from now on; the previous attempt's are read to their end."""
        self._tailer.retire_all()
        self._tailer.follow(sources)

    def close(self) -> None:
        """Send every line still unsent, then stop."""
        self._stopped.set()
        self._thread.join()
        self._tailer.retire_all()
        self._tailer.poll()

    def _run(self) -> None:
        while not self._stopped.wait(self.INTERVAL):
            self._tailer.poll()


class ReportingAgent(LocalElasticAgent):
    """torch's LocalElasticAgent, reporting what it does to the Job."""

    def __init__(self, spec: WorkerSpec, logs_specs: NodeLogsSpecs, channel: Channel,
                 node: int, forwarder: LogForwarder | None = None, **kwargs: Any) -> None:
        super().__init__(spec, logs_specs, **kwargs)
        self._channel = channel
        self._node = node
        self.forwarder = forwarder
        self._node_logs = logs_specs
        self._failure_reported = False
        self._restart_reason: str | None = None
        self._requested_restart: str | None = None  # a reason, set by the command thread
        self._round: RoundSeen | None = None
        self._pauses: dict[int, int] = {}  # rank -> its debugger notice's mtime, while paused

    def request_restart(self, reason: str) -> None:
        """Restart the group at the next monitor tick: ``user``, or ``membership`` (a peer was lost)."""
        self._requested_restart = reason

    def worker_pids(self) -> set[int]:
        pcontext = self._pcontext
        return set(pcontext.pids().values()) if pcontext is not None else set()

    @property
    def restart_count(self) -> int:
        return self._worker_group.spec.max_restarts - self._remaining_restarts

    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        super()._rendezvous(worker_group)
        group_rank, group_world_size = _group_ranks(worker_group)
        state = self._rendezvous_state()
        if state is not None:
            self._round = RoundSeen(state.round, group_world_size)
        self._channel.send_report(protocol.Rendezvous(
            group_rank=group_rank,
            group_world_size=group_world_size,
            world_size=worker_group.workers[0].world_size if worker_group.workers else 0,
            master_addr=worker_group.master_addr,
            master_port=worker_group.master_port,
        ))

    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        pids = super()._start_workers(worker_group)
        pcontext = self._pcontext
        assert pcontext is not None, "torch sets the process context as it starts workers"
        group_rank, group_world_size = _group_ranks(worker_group)
        workers = tuple(
            protocol.StartedWorker(
                rank=w.global_rank, local_rank=w.local_rank, role_rank=w.role_rank,
                world_size=w.world_size, role_world_size=w.role_world_size,
                pid=pids[w.local_rank], stdout=pcontext.stdouts[w.local_rank],
                stderr=pcontext.stderrs[w.local_rank],
                error_file=pcontext.error_files[w.local_rank])
            for w in worker_group.workers
        )
        self._failure_reported = False
        self._pauses.clear()
        started = protocol.Started(
            role=worker_group.spec.role, attempt=self._node_logs.last_attempt,
            restart_count=self.restart_count, group_rank=group_rank,
            group_world_size=group_world_size, observed_at=time.time(), workers=workers)
        self._channel.send_report(started)
        if self.forwarder is not None:  # after STARTED: the Job drops lines of ranks it has not seen
            self.forwarder.follow(started_sources(self._node, started))
        return pids

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        requested, self._requested_restart = self._requested_restart, None
        if requested is not None:
            self._restart_reason = requested
            self._restart_workers(worker_group)
            return RunResult(state=WorkerState.HEALTHY)
        result = super()._monitor_workers(worker_group)
        if result.state == WorkerState.HEALTHY:
            self._report_pauses(worker_group)
        if result.state == WorkerState.HEALTHY and self._peer_lapsed():
            self._restart_reason = "membership"
            self._restart_workers(worker_group)
            return result
        if result.state == WorkerState.SUCCEEDED:
            # Report before torch's exit barrier: a peer lost while this node waits there must
            # not hold the results back (the Job ends the wait once the job has succeeded).
            self._channel.send_report(protocol.Succeeded(restart_count=self.restart_count,
                                                         return_values=dict(result.return_values)))
        if result.state in _FAILED_STATES and not self._failure_reported:
            self._failure_reported = True
            failures = {**self._other_failures(worker_group, result), **result.failures}
            self._channel.send_report(protocol.WorkerFailed(
                restart_count=self.restart_count,
                remaining_restarts=self._remaining_restarts,
                observed_at=time.time(),
                failures=tuple(failure_report(rank, f, self.restart_count)
                               for rank, f in sorted(failures.items())),
            ))
        return result

    def _other_failures(self, worker_group: WorkerGroup,
                        result: RunResult) -> dict[int, ProcessFailure]:
        """Ranks that failed besides the one torch names (it reports the first it joins):
        a rank killed by the user and the peer whose collective broke because of it are both
        there, and the Job orders them. Those torch itself SIGTERMed afterwards are not."""
        pcontext = self._pcontext
        processes = getattr(getattr(pcontext, "_pc", None), "processes", None) or []
        named = {f.local_rank for f in result.failures.values()}
        found: dict[int, ProcessFailure] = {}
        for worker in worker_group.workers:
            local = worker.local_rank
            if pcontext is None or local in named or local >= len(processes):
                continue
            code = processes[local].exitcode
            if code in (None, 0, -signal.SIGTERM):
                continue
            found[worker.global_rank] = ProcessFailure(
                local_rank=local, pid=processes[local].pid, exitcode=code,
                error_file=pcontext.error_files[local])
        return found

    def _report_pauses(self, worker_group: WorkerGroup) -> None:
        """A rank that stopped in its debugger wrote a notice beside its logs: report it, and
        report when it is gone (the rank went on)."""
        pcontext = self._pcontext
        if pcontext is None:
            return
        for worker in worker_group.workers:
            rank_dir = os.path.dirname(pcontext.error_files[worker.local_rank])
            notice = os.path.join(rank_dir, rank_debugger.NOTICE_NAME)
            try:
                stamp = os.stat(notice).st_mtime_ns
            except FileNotFoundError:
                if self._pauses.pop(worker.global_rank, None) is not None:
                    self._channel.send_report(protocol.Resumed(rank=worker.global_rank,
                                                               observed_at=time.time()))
                continue
            if self._pauses.get(worker.global_rank) == stamp:
                continue
            try:
                with open(notice) as source:
                    data = json.load(source)
            except (OSError, ValueError):
                continue  # being replaced: read it next tick
            self._pauses[worker.global_rank] = stamp
            self._channel.send_report(protocol.Paused(
                rank=worker.global_rank, reason=str(data["reason"]), file=str(data["file"]),
                line=int(data["line"]), function=str(data["function"]),
                source=str(data["source"]), cell=data.get("cell"),
                exception=data.get("exception"), socket=str(data["socket"]),
                observed_at=time.time()))

    def _rendezvous_state(self) -> Any:
        """torch's dynamic rendezvous state as last synced (None for the etcd v1 handler)."""
        holder = getattr(self._worker_group.spec.rdzv_handler, "_state_holder", None)
        return holder.state if holder is not None else None

    def _peer_lapsed(self) -> bool:
        """A peer of this round stopped heartbeating and did not finish (torch syncs the
        state every tick; the exit barrier's count is read only when someone is silent)."""
        state = self._rendezvous_state()
        if state is None:
            return False
        silent = silent_peers(self._round, state.round, state.complete, state.closed,
                              len(state.participants))
        return silent > 0 and peers_lost(silent, self._finished_nodes())

    def _finished_nodes(self) -> int:
        """How many nodes of this round reached torch's exit barrier (its member count)."""
        store = self._worker_group.store
        try:
            return int(store.add(_EXIT_BARRIER_MEMBERS, 0)) if store is not None else 0
        except Exception:  # the store is unreachable: nothing tells them finished
            return 0

    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        # torch stops the group for a restart with a 30 s SIGTERM grace whatever
        # shutdown_timeout says: a worker that ignores SIGTERM held every restart 30 s
        self._shutdown(timeout=self._shutdown_timeout)

    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        if self._restart_reason is not None:
            reason, self._restart_reason = self._restart_reason, None
        elif worker_group.state in _FAILED_STATES:
            reason = "failure"
        else:
            reason = "membership"
        self._channel.send_report(protocol.Restarting(
            reason=reason,
            remaining_restarts=self._remaining_restarts,
            max_restarts=worker_group.spec.max_restarts,
            observed_at=time.time(),
        ))
        super()._restart_workers(worker_group)


def _group_ranks(worker_group: WorkerGroup) -> tuple[int, int]:
    """The group rank and size a rendezvous gave (torch leaves them None before one)."""
    assert worker_group.group_rank is not None and worker_group.group_world_size is not None
    return worker_group.group_rank, worker_group.group_world_size


def rendezvous_parameters(config: AgentConfig) -> RendezvousParameters:
    options = config.options
    configs: dict[str, Any] = {
        "join_timeout": int(options.rdzv_timeout),
        "timeout": int(options.rdzv_timeout),
        "read_timeout": int(min(options.rdzv_timeout, 60)),
        "last_call_timeout": 3,
        "keep_alive_interval": 1,
        "keep_alive_max_attempt": 3,
    }
    if config.backend == "c10d":
        configs["is_host"] = False
    configs.update(options.rdzv_configs)
    return RendezvousParameters(
        backend=config.backend,
        endpoint=config.endpoint,
        run_id=config.run_id,
        min_nodes=options.min_nodes,
        max_nodes=options.max_nodes,
        local_addr=config.local_addr,
        **configs,
    )


def _prepare_process(config: AgentConfig) -> None:
    # torch 2.13 skips re-publishing MASTER_ADDR/PORT for a new rendezvous round
    # when the node that hosts the shared TCP store stays rank 0, so a node that
    # joins a running job waits forever. Without sharing, rank 0 publishes every
    # round (see README, "Why TORCH_DISABLE_SHARE_RDZV_TCP_STORE").
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if config.options.start_method == "forkserver":
        multiprocessing.set_forkserver_preload(list(payload.FORKSERVER_PRELOAD))


class _ExceptionTextFilter(logging.Filter):
    """Puts a record's traceback in its message, so torch's log formatter never sees exc_info.

    torch's formatter imports ``torch._dynamo`` (with sympy) the first time it
    formats a record with exc_info: the "failed (exitcode: ...)" line of the
    first worker failure cost ~1.5 s before the agent acted on it. The text
    printed is the same.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.msg, record.args, record.exc_info = f"{record.getMessage()}\n{text}", (), None
        return True


def _quiet_failure_logs() -> None:
    logger = torch_mp_api.logger
    if not any(isinstance(f, _ExceptionTextFilter) for f in logger.filters):
        logger.addFilter(_ExceptionTextFilter())


def _stop_heartbeats(handler: Any) -> bool:
    """After a job stopped by a signal, silence its rendezvous handler (left open, as torchrun
    leaves it) so the host can serve another job; False when the handler cannot be silenced."""
    stop = getattr(handler, "_stop_heartbeats", None)
    if stop is None:
        return False
    stop()
    return True


class NodeHost:
    """An agent process: runs the node of one job after another, and the Job's commands.

    ``serve`` (a local host) takes each job's ``AgentConfig`` from the channel
    and runs it with ``run``; between jobs it keeps what is expensive: this
    interpreter with torch imported, and the forkserver workers fork from.
    Each job still gets its own environment, sys.path and cwd (the kernel's),
    agent log, ``ReportingAgent``, rendezvous handler and workers. A node
    joined from another machine runs one job (``run``) and exits.

    One thread reads the channel throughout: configurations queue for the
    main thread; commands act at once. When the Job's end closes (the kernel
    died), a local host kills its whole process group, workers included.
    """

    def __init__(self, channel: Channel, local: bool) -> None:
        self._channel = channel
        self._local = local
        # the host's own path beneath each job's: not the PYTHONPATH the first job started it with
        started_with = set(os.environ.get("PYTHONPATH", "").split(os.pathsep))
        self._own_path = [p for p in sys.path if p not in started_with]
        self._configs: queue.SimpleQueue[AgentConfig | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._agent: ReportingAgent | None = None
        self._job: str | None = None  # the run id of the job this host was last given
        self._in_run = False  # inside agent.run(): a SIGTERM there stops the job as torch does
        self._stop_requested = False
        self._reusable = True
        threading.Thread(target=self._listen, name="elastic_nb-commands", daemon=True).start()

    def serve(self) -> int:
        """Run jobs as the Job sends them, until it goes or a job leaves this host unusable."""
        signal.signal(signal.SIGTERM, torch_mp_api._terminate_process_handler)
        _quiet_failure_logs()
        self._channel.send_report(protocol.HostReady(pid=os.getpid()))
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
            self._channel.send_report(protocol.NodeDone(exitcode=exitcode, reusable=reusable))
            if not reusable:
                return exitcode

    def run(self, config: AgentConfig) -> int:
        """Run one node of a job to completion, reporting to the Job; its exit code."""
        self._reusable = True
        with self._lock:
            self._job = config.run_id
        _enter_job(config, self._own_path)
        _prepare_process(config)
        try:
            register_backends()
            handler = rdzv_registry.get_rendezvous_handler(rendezvous_parameters(config))
        except Exception as exc:
            self._channel.send_report(protocol.AgentError(_describe(exc, config),
                                                          traceback.format_exc()))
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
            return 1
        except Exception as exc:
            self._channel.send_report(protocol.AgentError(_describe(exc, config),
                                                          traceback.format_exc()))
            return 1
        finally:
            with self._lock:
                self._agent, self._in_run, self._stop_requested = None, False, False
            if shutdown_rendezvous:
                handler.shutdown()
            else:
                self._reusable = _stop_heartbeats(handler)
            if forwarder is not None:
                forwarder.close()
        if result is None:
            self._channel.send_report(protocol.AgentError(
                "this node was not admitted to the rendezvous (the world is full)", None))
            return 1
        if result.is_failed():
            self._channel.send_report(protocol.Failed(failures=tuple(
                failure_report(rank, f, agent.restart_count)
                for rank, f in sorted(result.failures.items()))))
            return 1
        return 0  # the agent reported its results before the exit barrier

    def _make_agent(self, config: AgentConfig, handler: Any) -> ReportingAgent:
        options = config.options
        spec = WorkerSpec(
            role=config.role,
            local_world_size=config.nproc,
            entrypoint=payload.run_worker,
            args=(config.payload, payload.JobContext.of_this_process(
                options.post_mortem, options.post_mortem_timeout)),
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
            self._channel,
            config.node,
            LogForwarder(self._channel) if config.tee else None,
            start_method=options.start_method,
            exit_barrier_timeout=options.exit_barrier_timeout,
            log_line_prefix_template=options.log_line_prefix_template if config.tee else None,
            shutdown_timeout=options.shutdown_timeout,
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
                os.kill(os.getpid(), signal.SIGTERM)  # torch stops the workers, then returns
            else:
                self._stop_requested = True

    def _listen(self) -> None:
        while True:
            try:
                message = self._channel.receive() or {}
            except (OSError, ValueError):
                message = {}
            kind = message.get("kind")
            if kind == CommandKind.CONFIGURE:
                config = AgentConfig.from_message(message)
                with self._lock:
                    self._job, self._stop_requested = config.run_id, False
                self._configs.put(config)
                continue
            if (kind is None and self._local) or kind == CommandKind.KILL:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            if kind is None:
                self._configs.put(None)
                self._stop()
                return
            with self._lock:
                agent = self._agent
            if kind == CommandKind.STOP:
                self._stop(message.get("run_id"))
            elif agent is None:
                continue  # between jobs: a command for a job that is over
            elif kind == CommandKind.RESTART:
                agent.request_restart(str(message.get("reason", "user")))
            elif kind == CommandKind.SIGNAL and message["pid"] in agent.worker_pids():
                os.kill(message["pid"], signal.Signals[message["signal"]])


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


def run_node(config: AgentConfig, channel: Channel) -> int:
    """Run one node joined from another machine to completion; the process exit code."""
    return NodeHost(channel, local=False).run(config)


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
