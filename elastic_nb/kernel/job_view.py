"""What a Job handle reads: its state, the read model, its logs, and its displays.

``JobView`` is the reading half of ``kernel.job.Job``: nothing here blocks
on the job except the waits named so (``wait_until``, ``follow``), and
nothing here commands a node. The dashboard is imported only when a job is
displayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from elastic_nb.kernel import host_pool, places
from elastic_nb.kernel.core import JobCore
from elastic_nb.kernel.log_book import LogBook
from elastic_nb.kernel.metrics_book import MetricsBook
from elastic_nb.kernel.pump import Pump
from elastic_nb.kernel.supervisor import StatsSampler
from elastic_nb.kernel.waiting import poll_until
from elastic_nb.model import snapshot as snapshots
from elastic_nb.model.checkpoints import Checkpoint
from elastic_nb.model.errors import RankFailure
from elastic_nb.model.goodput import Goodput, goodput
from elastic_nb.model.placement import Placement
from elastic_nb.model.plan import JobPlan
from elastic_nb.model.render import summary_text
from elastic_nb.model.state import Event, JobStatus, NodeStatus, WorkerInfo

if TYPE_CHECKING:
    import pandas


class JobView:
    """The reading half of a Job (see ``Job`` for the index of both halves)."""

    def __init__(self, plan: JobPlan, core: JobCore, pump: Pump) -> None:
        self._plan = plan
        self._core = core
        self._lock, self._changed, self._state = core.lock, core.changed, core.state
        self._pump = pump
        self._stats = StatsSampler()

    # ----------------------------------------------------------- properties

    @property
    def run_id(self) -> str:
        return self._plan.run_id

    @property
    def backend(self) -> str:
        return self._plan.backend

    @property
    def endpoint(self) -> str:
        return self._core.endpoint

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
    def checkpoints(self) -> list[Checkpoint]:
        """The complete checkpoints in the job's ``checkpoint_dir``, oldest first (``.step``,
        ``.world_size``, ``.bytes``, ``.seconds`` to write, ``.time``); read a few times a second."""
        if self.done:
            self._pump.join()  # the job's last look at the directory is in
        with self._lock:
            return list(self._state.checkpoints)

    @property
    def checkpoint_dir(self) -> str | None:
        """Where the ranks' ``enb.save_checkpoint`` writes (``launch(checkpoint_dir=...)``)."""
        return self._plan.options.checkpoint_dir

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
        return self._core.logs.book

    @property
    def metrics_book(self) -> MetricsBook:
        return self._core.logs.metrics

    @property
    def metrics(self) -> pandas.DataFrame:
        """What the ranks reported with ``enb.report``: one row a record (``time, rank,
        attempt, world, step``, a column a metric), every attempt, the newest 500,000."""
        if self.done:
            self._pump.join()  # a finished job's last records are in
        return self.metrics_book.frame()

    def goodput(self) -> Goodput:
        """Where the job's time went: productive steps, badput by category, each fault's cost
        (``model.goodput``; needs ``enb.report`` steps)."""
        if self.done:
            self._pump.join()
        return goodput(self.events, self.metrics_book.steps(), time.time())

    def plot(self) -> Any:
        """A static picture of the reported metrics with the faults marked (matplotlib)."""
        from elastic_nb.ui import static_plot

        return static_plot.figure(self.metrics_book, self.events)

    def snapshot(self) -> snapshots.JobSnapshot:
        """The job as every view shows it, at this moment (CPU/RSS at most 1 s old)."""
        with self._lock:
            pids = [w.pid for w in self._state.workers.values()
                    if w.state.alive and self._state.nodes[w.node].local]
        stats = self._stats.recent(pids)
        last_output = self.log_book.last_line_time()
        with self._lock:
            return snapshots.build(self._plan, self.endpoint, self._state, last_output, stats,
                                   time.time(), idle_hosts=host_pool.POOL.idle_count())

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for each new event (from the Job's pump thread)."""
        with self._lock:
            self._core.listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        with self._lock:
            if listener in self._core.listeners:
                self._core.listeners.remove(listener)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 90,
                   what: str = "the condition") -> Any:
        """Block until ``predicate()`` is truthy and return its value.

        ``job.wait_until(lambda: "step 3" in job.logs(rank=1), what="rank 1 at step 3")``.
        TimeoutError naming ``what`` after ``timeout`` seconds; RuntimeError at
        once if the job ends without the condition holding.
        """
        def ended() -> str | None:
            return f"job {self.run_id} ended ({self.state})" if self.done else None

        def pause(seconds: float) -> None:
            with self._changed:
                self._changed.wait(seconds)

        try:
            return poll_until(predicate, timeout, what, pause, ended=ended)
        except TimeoutError:
            raise TimeoutError(f"job {self.run_id}: no {what} after {timeout} s "
                               f"(it is {self.state})") from None

    def logs(self, rank: int | None = None, stream: str | None = None,
             attempt: int | None = None, collapse: bool = False) -> str:
        """Every line the ranks printed, prefixed; filter by rank, stream and attempt.

        ``collapse=True`` shows a line that several ranks printed near each
        other once, as ``[ranks 0-7]: line`` (a single rank's view is exact).
        """
        if self.done:
            self._pump.join()  # a finished job's last lines are in
        return self._core.logs.text(rank, stream, attempt, collapse)

    def follow(self, collapse: bool = False) -> Iterator[str]:
        """Yield each rank's lines, prefixed, as they arrive, until the job ends (blocking).

        ``collapse=True`` shows the same line printed by several ranks within
        one batch (a tenth of a second) once, as ``[ranks 0-7]: line``.
        """
        return self._core.logs.iterate(lambda: self.done and not self._pump.is_alive(), collapse)

    # ------------------------------------------------------------- display

    def places(self) -> dict[str, Placement | None]:
        """Where a node can be started from here, by name: this machine, the places registered
        with ``elastic_nb.register_place`` and those this job's nodes use (add-node's chooser)."""
        with self._lock:
            return places.of_job(self._core.placements)

    def summary(self) -> str:
        """A readable text summary (what a terminal or nbconvert shows)."""
        return summary_text(self.snapshot())

    def __repr__(self) -> str:
        return self.summary()
