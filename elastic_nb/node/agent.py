"""The reporting agent: torch's ``LocalElasticAgent``, telling the Job what it does.

``ReportingAgent`` fills in torch's template hooks (``_rendezvous``,
``_start_workers``, ``_monitor_workers``, ``_restart_workers``,
``_stop_workers``) to send reports (``wire.reports``): the round a node was
admitted to, ranks, pids and files per attempt, worker failures, pauses in
a rank's debugger, restarts and their reason, the results. Rendezvous,
restart policy, error files and shutdown stay torch's. It restarts its group
when the Job asks (``request_restart``) or when a peer of its round stopped
heartbeating (``model.heartbeat``). torch's private names are reached
through ``compat.torch_compat`` only.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerSpec, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import api as torch_mp_api
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.launcher.api import LaunchConfig

from elastic_nb.compat import torch_compat
from elastic_nb.model.heartbeat import RoundSeen, peers_lost, silent_peers
from elastic_nb.model.losses import may_follow_a_peer_loss
from elastic_nb.node.forwarder import LogForwarder
from elastic_nb.node.link import JobLink
from elastic_nb.node.logs_spec import NodeLogsSpecs
from elastic_nb.wire import reports as protocol
from elastic_nb.wire.config import FORKSERVER_PRELOAD, AgentConfig
from elastic_nb.wire.logfiles import started_sources
from elastic_nb.wire.rank_files import NOTICE_NAME, PauseNotice
from elastic_nb.wire.records import ProtocolError

_FAILED_STATES = (WorkerState.FAILED, WorkerState.UNHEALTHY)


_STDERR_TAIL_LINES = 20
_STDERR_TAIL_BYTES = 8192


def stderr_tail(path: str | None) -> str | None:
    """The last lines a rank wrote to its stderr file (None if it wrote nothing)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.path.getsize(path) - _STDERR_TAIL_BYTES))
            lines = file.read().decode(errors="replace").splitlines()[-_STDERR_TAIL_LINES:]
    except OSError:
        return None
    text = "\n".join(lines).strip("\n")
    return f"the last lines of its stderr ({path}):\n{text}" if text else None


def failure_report(rank: int, failure: ProcessFailure, restart_count: int,
                   stderr: str | None = None) -> protocol.FailureReport:
    """A worker failure as plain data: torch's error file, or what the exit code tells with the
    tail of the rank's ``stderr`` file (a script's ``sys.exit(n)``, a crash)."""
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
            trace = stderr_tail(stderr)
    return protocol.FailureReport(
        rank=rank, local_rank=failure.local_rank, pid=failure.pid, exitcode=failure.exitcode,
        signal=signal_name, message=str(message), traceback=trace,
        timestamp=float(failure.timestamp), restart_count=restart_count)


class ReportingAgent(LocalElasticAgent):
    """torch's LocalElasticAgent, reporting what it does to the Job."""

    def __init__(self, spec: WorkerSpec, logs_specs: NodeLogsSpecs, channel: JobLink,
                 node: int, forwarder: LogForwarder | None = None, shutdown_timeout: int = 30,
                 hold_window: float = 5.0, **kwargs: Any) -> None:
        super().__init__(spec, logs_specs, shutdown_timeout=shutdown_timeout, **kwargs)
        self._stop_grace = shutdown_timeout
        self._channel = channel
        self._node = node
        self.forwarder = forwarder
        self._node_logs = logs_specs
        self._failure_reported = False
        self._restart_reason: str | None = None
        self._requested_restart: str | None = None  # a reason, set by the command thread
        self._round: RoundSeen | None = None  # the last round, for the heartbeat rule
        self._pauses: dict[int, int] = {}  # rank -> its debugger notice's mtime, while paused
        self.succeeded = False  # every worker of this node returned (Succeeded was sent)
        self._hold_window = hold_window  # how long a held failure waits for the Job's verdict
        self._released = threading.Event()  # the Job's verdict: a held failure is the node's

    @property
    def shutdown_grace(self) -> float:
        """Seconds a worker has after SIGTERM before SIGKILL."""
        return float(self._stop_grace)

    def request_restart(self, reason: str) -> None:
        """Restart the group at the next monitor tick: ``user``, or ``membership`` (a peer was
        lost); ``failure`` releases a held failure to torch's restart policy."""
        if reason == "failure":
            self._released.set()
        else:
            self._requested_restart = reason

    def worker_pids(self) -> set[int]:
        pcontext = torch_compat.process_context(self)
        return set(pcontext.pids().values()) if pcontext is not None else set()

    @property
    def restart_count(self) -> int:
        return worker_group_of(self).spec.max_restarts - torch_compat.remaining_restarts(self)

    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        super()._rendezvous(worker_group)
        group_rank, group_world_size = _group_ranks(worker_group)
        state = self._rendezvous_state()
        if state is not None:
            self._round = RoundSeen(state.round, group_world_size)
        self._channel.send(protocol.Rendezvous(
            group_rank=group_rank,
            group_world_size=group_world_size,
            world_size=worker_group.workers[0].world_size if worker_group.workers else 0,
            master_addr=worker_group.master_addr,
            master_port=worker_group.master_port,
        ))

    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        pids = super()._start_workers(worker_group)
        pcontext = torch_compat.process_context(self)
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
            group_world_size=group_world_size, observed_at=time.time(), workers=workers,
            round=self._round.round if self._round is not None else None)
        self._channel.send(started)
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
            self.succeeded = True
            # Report before torch's exit barrier: a peer lost while this node waits there must
            # not hold the results back (the Job ends the wait once the job has succeeded).
            self._channel.send(protocol.Succeeded(
                restart_count=self.restart_count, return_values=dict(result.return_values),
                round=self._round.round if self._round is not None else None))
        if result.state in _FAILED_STATES and not self._failure_reported:
            self._failure_reported = True
            failures = {**self._other_failures(worker_group, result), **result.failures}
            reports = tuple(failure_report(rank, f, self.restart_count,
                                           self.stderr_file(f.local_rank))
                            for rank, f in sorted(failures.items()))
            held = (self._round is not None and self._round.nodes > 1
                    and may_follow_a_peer_loss(r.message for r in reports))
            self._released.clear()
            self._channel.send(protocol.WorkerFailed(
                restart_count=self.restart_count,
                remaining_restarts=torch_compat.remaining_restarts(self),
                observed_at=time.time(), failures=reports, held=held))
            verdict = self._await_verdict() if held else None
            if verdict is not None:  # a peer was lost (or the user restarts): no budget spent
                self._restart_reason = verdict
                self._restart_workers(worker_group)
                return RunResult(state=WorkerState.HEALTHY)
        return result

    def _await_verdict(self) -> str | None:
        """Hold a failure that may follow from a lost peer (``model.losses``): the restart the
        Job asks for within the window (``membership`` when a node was lost), or None when it
        released the failure or said nothing (torch's restart policy applies)."""
        deadline = time.monotonic() + self._hold_window
        while not self._released.is_set() and time.monotonic() < deadline:
            requested, self._requested_restart = self._requested_restart, None
            if requested is not None:
                return requested
            self._released.wait(0.05)
        return None

    def stderr_file(self, local_rank: int) -> str:
        """Where the local rank of the last start writes its stderr (``NodeLogsSpecs``)."""
        return self._node_logs.stderr_of(local_rank)

    def _worker_exits(self, worker_group: WorkerGroup
                      ) -> Iterator[tuple[Any, int, int | None, str]]:
        """``(worker, pid, exit code or None while it runs, error file)`` of each worker of this
        attempt that torch has a process for: what the failure rules below pick from."""
        pcontext = torch_compat.process_context(self)
        if pcontext is None:
            return
        processes = torch_compat.worker_exitcodes(pcontext)
        for worker in worker_group.workers:
            local = worker.local_rank
            if local < len(processes):
                pid, code = processes[local]
                yield worker, pid, code, pcontext.error_files[local]

    def _other_failures(self, worker_group: WorkerGroup,
                        result: RunResult) -> dict[int, ProcessFailure]:
        """Ranks that failed besides the one torch names (it reports the first it joins):
        a rank killed by the user and the peer whose collective broke because of it are both
        there, and the Job orders them. Those torch itself SIGTERMed afterwards are not."""
        named = {f.local_rank for f in result.failures.values()}
        return {worker.global_rank: ProcessFailure(local_rank=worker.local_rank, pid=pid,
                                                   exitcode=code, error_file=error_file)
                for worker, pid, code, error_file in self._worker_exits(worker_group)
                if worker.local_rank not in named and code not in (None, 0, -signal.SIGTERM)}

    def failed_before(self, moment: float) -> tuple[protocol.FailureReport, ...]:
        """The ranks of this attempt that failed on their own before ``moment`` (a stop's
        arrival): they had written torch's error file by then, which a stop's SIGTERM never
        writes. A stop that crossed this node's failure on the wire must not hide it."""
        reports = []
        for worker, pid, code, error_file in self._worker_exits(worker_group_of(self)):
            try:
                written = os.stat(error_file).st_mtime
            except OSError:
                continue
            if written < moment:
                failure = ProcessFailure(local_rank=worker.local_rank, pid=pid,
                                         exitcode=code or 1, error_file=error_file)
                reports.append(failure_report(worker.global_rank, failure, self.restart_count,
                                              self.stderr_file(worker.local_rank)))
        return tuple(reports)

    def _report_pauses(self, worker_group: WorkerGroup) -> None:
        """A rank that stopped in its debugger wrote a notice beside its logs: report it, and
        report when it is gone (the rank went on)."""
        pcontext = torch_compat.process_context(self)
        if pcontext is None:
            return
        for worker in worker_group.workers:
            rank_dir = os.path.dirname(pcontext.error_files[worker.local_rank])
            notice = os.path.join(rank_dir, NOTICE_NAME)
            try:
                stamp = os.stat(notice).st_mtime_ns
            except FileNotFoundError:
                if self._pauses.pop(worker.global_rank, None) is not None:
                    self._channel.send(protocol.Resumed(rank=worker.global_rank,
                                                               observed_at=time.time()))
                continue
            if self._pauses.get(worker.global_rank) == stamp:
                continue
            try:
                pause = PauseNotice.read(notice)
            except (OSError, ProtocolError):
                continue  # being replaced: read it next tick
            self._pauses[worker.global_rank] = stamp
            self._channel.send(protocol.Paused(
                rank=worker.global_rank, reason=pause.reason, file=pause.file, line=pause.line,
                function=pause.function, source=pause.source, cell=pause.cell,
                exception=pause.exception, socket=pause.socket, observed_at=time.time()))

    def _rendezvous_state(self) -> Any:
        """torch's dynamic rendezvous state as last synced (None for the etcd v1 handler)."""
        return torch_compat.rendezvous_state(worker_group_of(self).spec.rdzv_handler)

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
        store = worker_group_of(self).store
        try:
            return int(store.add(torch_compat.EXIT_BARRIER_MEMBERS, 0)) if store is not None else 0
        except Exception:  # the store is unreachable: nothing tells them finished
            return 0

    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        # torch stops the group for a restart with a 30 s SIGTERM grace whatever
        # shutdown_timeout says: a worker that ignores SIGTERM held every restart 30 s.
        # A frozen (SIGSTOPped) worker acts on SIGTERM only once continued.
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        torch_compat.shutdown_workers(self, self._stop_grace)

    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        if self._restart_reason is not None:
            reason, self._restart_reason = self._restart_reason, None
        elif worker_group.state in _FAILED_STATES:
            reason = "failure"
        else:
            reason = "membership"
        self._channel.send(protocol.Restarting(
            reason=reason,
            remaining_restarts=torch_compat.remaining_restarts(self),
            max_restarts=worker_group.spec.max_restarts,
            observed_at=time.time(),
        ))
        super()._restart_workers(worker_group)


def worker_group_of(agent: LocalElasticAgent) -> WorkerGroup:
    return torch_compat.worker_group(agent)


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


def prepare_process(config: AgentConfig) -> None:
    # torch 2.13 skips re-publishing MASTER_ADDR/PORT for a new rendezvous round
    # when the node that hosts the shared TCP store stays rank 0, so a node that
    # joins a running job waits forever. Without sharing, rank 0 publishes every
    # round (see README, "Why TORCH_DISABLE_SHARE_RDZV_TCP_STORE").
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    # as torchrun's launcher: the signals its agent forwards, in every worker's environment
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", LaunchConfig.signals_to_handle)
    if config.options.start_method == "forkserver":
        multiprocessing.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    torch_compat.quicken_rendezvous(config.options.max_nodes)


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


def quiet_failure_logs() -> None:
    logger = torch_mp_api.logger
    if not any(isinstance(f, _ExceptionTextFilter) for f in logger.filters):
        logger.addFilter(_ExceptionTextFilter())


