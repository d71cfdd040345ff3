"""enb.report: what ranks report reaches job.metrics, every rank and attempt, bounded."""

from __future__ import annotations

import math
import os

import pytest
import scenarios
from util import wait_until

import elastic_nb as enb
from elastic_nb.kernel.metrics_book import MetricsBook, metric_sources
from elastic_nb.wire.logfiles import LogSource
from elastic_nb.worker import metrics as worker_metrics


def test_report_refuses_what_is_not_a_number():
    with pytest.raises(TypeError, match=r"loss='high' is a str, not a number"):
        enb.report(1, loss="high")
    with pytest.raises(TypeError, match="step=1.5 is a float, not an int"):
        enb.report(1.5, loss=1.0)
    with pytest.raises(TypeError, match="ok=True is a bool"):
        enb.report(1, ok=True)
    with pytest.raises(TypeError, match="'world' names a column"):
        enb.report(1, world=2)
    enb.report(2, loss=0.5, count=3)  # outside a job: checked, kept nowhere


def _source(path: str, rank: int, attempt: int) -> LogSource:
    return LogSource(path=path, stream="stdout", node=0, rank=rank, local_rank=rank, role="r",
                     group_rank=0, attempt=attempt, restart_count=attempt)


def test_the_book_keeps_its_bound_and_reads_what_the_worker_writes(tmp_path):
    """The worker's lines parse back to the same numbers; past the bound the oldest go."""
    (metrics_source,) = metric_sources([_source(str(tmp_path / "stdout.log"), 3, 1)])
    book = MetricsBook(max_records=5)
    lines = ["# world 4"] + [f"{100 + i}.5 {i} loss={0.1 * i!r} n={i} big=1e+300 bad=nan"
                             for i in range(8)] + ["garbage"]
    book.append(metrics_source, lines, 0.0)
    assert len(book) == 5 and book.dropped == 3
    frame = book.frame()
    assert list(frame.columns) == ["time", "rank", "attempt", "world", "step", "loss", "n",
                                   "big", "bad"]
    assert list(frame["step"]) == [3, 4, 5, 6, 7]
    assert set(frame["rank"]) == {3} and set(frame["attempt"]) == {1} and set(frame["world"]) == {4}
    assert frame["loss"].iloc[-1] == 0.1 * 7 and frame["n"].iloc[-1] == 7
    assert math.isnan(frame["bad"].iloc[0]) and frame["time"].iloc[0] == 103.5


def test_metrics_of_every_rank_and_attempt(tmp_path):
    """nproc 2, rank 1 killed mid-run, a restart: both ranks' steps of both attempts."""
    job = enb.launch(scenarios.reporting_steps, 40, 0.05, nproc=2, max_restarts=1)
    wait_until(lambda: "step 6" in job.logs(rank=1), timeout=90, what="rank 1 at step 6")
    job.kill(1)
    job.result(timeout=120)
    frame = job.metrics
    attempts = sorted(frame["attempt"].unique())
    assert len(attempts) == 2
    for attempt in attempts:
        for rank in (0, 1):
            mine = frame[(frame["rank"] == rank) & (frame["attempt"] == attempt)]
            assert len(mine) > 0, (rank, attempt)
            assert list(mine["step"]) == sorted(mine["step"])
    last = frame[frame["attempt"] == attempts[-1]]
    assert set(last[last["step"] == 39]["rank"]) == {0, 1}
    assert set(frame["world"]) == {2}
    assert {"loss", "lr"} <= set(frame.columns)
    assert os.path.exists(os.path.join(job.workers[0].rank_dir, worker_metrics.METRICS_FILE))
