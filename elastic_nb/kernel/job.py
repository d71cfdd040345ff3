"""The Job: the public handle of one elastic job.

Reading goes to the job's state (``JobCore``, fed by its ``Pump``) and the
read model built from it (``snapshot``); commands are checked against the
state by the rules, then carried out by the node handles (``kernel.nodes``),
which alone know whether a node is on this machine or joined from another.
What it reads (properties, the snapshot, logs, displays) is its base,
``JobView``; this module holds what it starts, waits for and commands.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from elastic_nb.kernel import hang_map, stacks
from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.debug_client import DebugSession, drive
from elastic_nb.kernel.hang_map import HangWatch
from elastic_nb.kernel.job_view import JobView
from elastic_nb.kernel.join_server import JoinDesk
from elastic_nb.kernel.planning import check_reachable, plan_node
from elastic_nb.kernel.pump import Pump
from elastic_nb.kernel.starting import NodeStarter
from elastic_nb.kernel.supervisor import SignalLike, parse_signal
from elastic_nb.model import controls, rules
from elastic_nb.model.errors import JobFailed
from elastic_nb.model.hangs import HangReport
from elastic_nb.model.plan import JobPlan, Node
from elastic_nb.model.state import JobStatus
from elastic_nb.rendezvous import embedded
from elastic_nb.wire import auth
from elastic_nb.wire.commands import Restart, Slow

_live_jobs: weakref.WeakSet[Job] = weakref.WeakSet()


@atexit.register
def _stop_live_jobs() -> None:
    for job in list(_live_jobs):
        job.stop()


class Job(JobView):
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
    Silent faults:
        ``freeze(rank)``, ``freeze_node(i)``, ``thaw(rank)`` / ``thaw(node=i)``,
        ``slow(rank, fraction)``.
    Finding a hang:
        ``hang_report()`` (blocking, a few seconds at most); ``stalled`` events.
    Debugging a paused rank:
        ``debug(rank)`` (blocking: pdb through ``input()``), ``debug_session(rank)``.
    Observing:
        ``add_listener(fn)`` / ``remove_listener(fn)`` for events, ``log_book``
        for lines; ``show()`` displays the dashboard.
    Nodes elsewhere:
        ``add_node(Node(n, on=Slurm(...) or SSH(...)))``, ``places()`` (where a node can
        start); ``join_address``, ``join_command()``, ``key_file`` for joining by hand.
    """

    def __init__(self, plan: JobPlan) -> None:
        self._plan = plan
        self._store = None
        endpoint = plan.endpoint or ""
        if plan.endpoint is None:  # the embedded c10d store, hosted here while the job runs
            self._store = embedded.host_store(plan.listen_addr)
            endpoint = f"{plan.listen_addr}:{self._store.port}"
        core = JobCore(plan, endpoint)
        super().__init__(plan, core, Pump(core, on_close=self._close))
        self._desk = JoinDesk(core, self._pump.watch)
        self._starter = NodeStarter(core, self._pump, self._desk.address, self._desk.wait_published)
        self.key_file = os.path.join(plan.log_dir, "job.key")  # readable by this user only
        self._watch = HangWatch(plan.options.hang_after, lambda: self.state == JobStatus.RUNNING,
                                lambda: max(self.log_book.last_line_time().values(),
                                            default=self._state.started_at),
                                lambda: self.hang_report(), core.stalled, plan.run_id)

    def start(self) -> Job:
        plans = dict(enumerate(self._plan.nodes))
        with self._lock:
            self._core.apply(rules.launched(self._state, time.time(), {
                "run_id": self.run_id, "backend": self.backend, "endpoint": self.endpoint,
                "nodes": len(self._plan.nodes), "world_size": self.planned_world_size}))
            auth.write_key_file(self.key_file, self._core.key)
            for index in (i for i, p in plans.items() if p.on is not None):
                self._starter.start(index, plans[index])  # reserved: submitted off the lock
        self._core.read_checkpoints(force=True)  # a relaunch lists the ones it resumes from
        if self._plan.default_payload is not None:
            self._desk.open(self._store)
        try:  # nodes elsewhere first: a refusal (sbatch) leaves nothing running here
            self._starter.submit_reserved()
        except BaseException:
            self._desk.close()
            self._store = None
            raise
        with self._lock:
            for index, node_plan in plans.items():
                if node_plan.on is None:
                    self._starter.start(index, node_plan)
            self._core.gate.open_if_ready()
        _live_jobs.add(self)
        self._pump.start()
        self._watch.start()
        return self

    @property
    def join_address(self) -> str:
        """Where nodes from other machines connect (published in the rendezvous store)."""
        return self._desk.address

    def join_command(self) -> str:
        """The command that joins this job from another terminal or machine."""
        return (f"python -m elastic_nb join --backend {self.backend} --endpoint {self.endpoint} "
                f"--run-id {self.run_id} --key-file {self.key_file} --nproc N")

    # -------------------------------------------------------------- results

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the job ends; the final state. TimeoutError if it has not.

        Interrupting the wait (Ctrl-C, "interrupt kernel") gives the cell back and
        leaves the job running, as ``concurrent.futures`` does: ``stop()`` ends it.
        """
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
            if not self.done:
                print(f"[elastic_nb] job {self.run_id} is still running (its dashboard too); "
                      "job.stop() ends it", file=sys.stderr, flush=True)
            raise
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

    # ------------------------------------------------------------- controls

    def kill(self, rank: int, sig: SignalLike = "SIGKILL") -> None:
        """Send ``sig`` to one worker; the agent's restart policy then applies."""
        signum = parse_signal(sig)
        with self._lock:
            events = controls.rank_killed(self._state, rank, signum.name, time.time())
            worker = self._state.workers[rank]
            self._core.nodes[worker.node].signal(worker.pid, signum)
            self._core.apply(events)

    def kill_node(self, index: int) -> None:
        """A machine lost: SIGKILL node ``index``'s agent and all its workers at once."""
        with self._lock:
            self._core.apply(controls.node_killed(self._state, index, time.time()))
            self._core.restart_survivors(index)  # first: their workers must not fail on the lost peer
            node = self._core.nodes[index]
        node.kill()

    def freeze(self, rank: int) -> None:
        """Stop one rank (SIGSTOP): a rank that makes no progress, its peers wait in their
        collectives (``collective_timeout`` bounds that); ``thaw(rank)`` continues it."""
        self._freeze_rank(rank, True)

    def freeze_node(self, index: int) -> None:
        """Freeze a whole node, host and workers, as a machine that hangs: it goes silent, and
        left frozen it is lost after ``liveness_timeout`` (the others re-form without it)."""
        with self._lock:
            events = controls.node_frozen(self._state, index, True, time.time())
            pids = [w.pid for w in self._state.workers.values() if w.node == index]
            self._core.nodes[index].freeze(True, pids)
            self._core.apply(events)

    def thaw(self, rank: int | None = None, node: int | None = None) -> None:
        """Continue a frozen rank (``thaw(rank)``) or node (``thaw(node=i)``)."""
        if (rank is None) == (node is None):
            raise ValueError("thaw a rank, job.thaw(3), or a node, job.thaw(node=1)")
        if rank is not None:
            self._freeze_rank(rank, False)
            return
        with self._lock:
            assert node is not None
            events = controls.node_frozen(self._state, node, False, time.time())
            pids = [w.pid for w in self._state.workers.values() if w.node == node]
            self._core.nodes[node].freeze(False, pids)
            self._core.apply(events)

    def slow(self, rank: int, fraction: float) -> None:
        """Make rank ``rank`` a straggler that runs ``fraction`` of its speed (0.25: a quarter)
        by stopping and continuing it; ``slow(rank, 1)`` gives it its full speed back."""
        with self._lock:
            events = controls.rank_slowed(self._state, rank, fraction, time.time())
            worker = self._state.workers[rank]
            self._core.nodes[worker.node].send(Slow(pid=worker.pid, fraction=float(fraction)))
            self._core.apply(events)

    def _freeze_rank(self, rank: int, frozen: bool) -> None:
        with self._lock:
            events = controls.rank_frozen(self._state, rank, frozen, time.time())
            worker = self._state.workers[rank]
            self._core.nodes[worker.node].signal(worker.pid,
                                                 signal.SIGSTOP if frozen else signal.SIGCONT)
            self._core.apply(events)

    def add_node(self, node: Node) -> int:
        """Start another node that joins at the next rendezvous round; its node index.

        Without its own ``fn`` the node runs the job's function; ``Node(on=...)``
        starts it elsewhere (Slurm, SSH): it joins once its scheduler starts it.
        """
        with self._lock:
            if self.done:
                raise RuntimeError(f"job {self.run_id} has already {self.state}")
            reason = controls.check_can_add_node(self._state, self._plan.options.max_nodes)
            if reason:
                raise ValueError(reason)
            index = len(self._state.nodes)
            node_plan = plan_node(index, node, self._plan.default_payload)
            check_reachable(self._plan.listen_addr, node_plan.on)
            self._starter.start(index, node_plan, added=True).send_config()
        self._starter.submit_reserved()  # sbatch, ssh: not under the job's lock
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
                    self._core.nodes[index].send(Restart(reason="user"))

    def stacks(self, timeout: float = 5) -> dict[int, str]:
        """The live Python stack of every thread of every running rank, on any node.

        Each worker dumps its stacks (faulthandler) when signalled, by this
        kernel or by its own node's host; a rank that does not answer within
        ``timeout``, or whose node does not, maps to a line saying so.
        """
        return stacks.dump(self._core, timeout)

    def hang_report(self, timeout: float = 5) -> HangReport:
        """Which rank is missing from which collective, and where it is instead (blocking, at
        most ``timeout`` s): every running rank's flight recorder and stack, analyzed.
        ``print(report)`` for the answer and the detail; ``report.suspects``, ``report.ranks``."""
        return hang_map.report(self._core, timeout)

    def debug_session(self, rank: int) -> DebugSession:
        """Connect to the debugger of a paused rank (``breakpoint()``, or post-mortem).

        A joined node's rank is reached through its node's channel. Raises
        ValueError when the rank is not paused, ConnectionError when its
        debugger does not answer, ``DebuggerBusy`` when another client has it.
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
            node = self._core.nodes[worker.node]
        return node.debug_session(rank, pause)

    def debug(self, rank: int, read: Callable[[str], str] = input,
              write: Callable[[str], Any] = print) -> None:
        """Drive pdb in a paused rank from here: blocking, until the rank goes on or ends.

        Each command is read with ``read`` (``input``: in Jupyter the frontend
        asks for it) and pdb's answer is written with ``write``. ``c``
        resumes the rank, ``q`` makes it fail (its restart policy applies);
        an empty line or end of input leaves the session, which resumes it.
        """
        drive(self.debug_session(rank), read, write)

    def stop(self) -> None:
        """End the job now: each node stops its workers as torch does on SIGTERM.

        A node that does not stop within its shutdown timeout is killed; a
        local host that stopped cleanly may stay warm for the next launch.
        """
        with self._lock:
            self._core.apply(controls.stop_requested(self._state, time.time()))
            nodes = self._core.stopping_nodes()
        self._core.stop_nodes(nodes)
        self._starter.cancel_all()  # nothing left in a queue or on a remote host
        with self._lock:
            self._core.apply(rules.finish(self._state, JobStatus.STOPPED, time.time()))
        if self._pump.is_alive() and not self._pump.on_thread():
            self._pump.wake()
            self._pump.join()

    def _close(self) -> None:
        """The pump is ending: nothing of the job listens any more."""
        self._watch.stop()
        self._starter.stop()
        self._desk.close()
        self._store = None
        _live_jobs.discard(self)

    # ------------------------------------------------------------- display

    def show(self) -> None:
        """Display the live dashboard (the text summary outside a Jupyter kernel)."""
        from elastic_nb.ui.dashboard import display

        display.show(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from elastic_nb.ui.dashboard import display

        return display.mimebundle(self, include, exclude)
