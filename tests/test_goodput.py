"""Goodput: the bill of a job's time from synthetic events and steps, and of a real kill."""

from __future__ import annotations

import pytest
import scenarios

import elastic_nb as enb
from elastic_nb.model.goodput import CATEGORIES, StepMark, event_steps, goodput
from elastic_nb.model.state import Event, EventKind

E = EventKind


def _steps(attempt: int, first: int, count: int, start: float, every: float = 1.0):
    return [StepMark(start + i * every, attempt, first + i, rank)
            for i in range(count) for rank in (0, 1)]


def _sums_to_elapsed(bill):
    assert set(bill.badput) == set(CATEGORIES)
    assert bill.productive + sum(bill.badput.values()) == pytest.approx(bill.elapsed)


def test_a_run_without_faults_is_startup_steps_and_teardown():
    events = [Event(0, E.LAUNCHED), Event(2, E.STARTED), Event(15, E.SUCCEEDED)]
    bill = goodput(events, _steps(0, 0, 11, 3.0), now=99)  # steps at 3..13
    assert bill.elapsed == 15 and bill.productive == 10
    assert bill.badput["startup"] == 3 and bill.badput["other"] == 2
    assert bill.ratio == pytest.approx(10 / 15) and bill.short() == "goodput 67%"
    assert bill.faults == []
    _sums_to_elapsed(bill)


def test_a_kill_without_checkpoint_redoes_every_step():
    """Steps 0-9 at 1..10 s, killed at 10.5 s, detected at 11, attempt 1 redoes 0.. from 14."""
    events = [Event(0, E.LAUNCHED), Event(10.5, E.KILLED, rank=1), Event(11, E.WORKER_FAILED, rank=1),
              Event(11.2, E.RESTARTING), Event(30, E.SUCCEEDED)]
    steps = _steps(0, 0, 10, 1.0) + _steps(1, 0, 15, 14.0)  # attempt 1: steps at 14..28
    bill = goodput(events, steps, now=99)
    (fault,) = bill.faults
    assert fault.what == "kill rank 1" and fault.step == 9
    assert fault.steps_redone == 9 and fault.wasted == pytest.approx(9.5)  # 9 steps + half a step
    assert fault.recovery == pytest.approx(3.5) and fault.stalled == 0
    assert bill.badput["recovery"] == pytest.approx(3.5)
    assert bill.badput["wasted_progress"] == pytest.approx(9.5)
    assert bill.productive == 14 and bill.badput["other"] == 2
    assert str(fault) == "kill rank 1 at step 9: 13.0 s = 3.5 s recovery + 9 steps redone 9.5 s"
    _sums_to_elapsed(bill)


def test_a_checkpoint_limits_the_waste_and_its_restore_is_billed_apart():
    events = [Event(0, E.LAUNCHED), Event(6.1, E.CHECKPOINT, detail={"step": 5, "seconds": 0.5}),
              Event(10.5, E.KILLED, rank=0), Event(11, E.WORKER_FAILED, rank=0),
              Event(12.5, E.RESTORED, detail={"step": 5, "next": 6, "seconds": 1.0}),
              Event(25, E.SUCCEEDED)]
    steps = _steps(0, 0, 10, 1.0) + _steps(1, 6, 4, 14.0)  # resumes at 6 (14 s) to 9 (17 s)
    bill = goodput(events, steps, now=99)
    (fault,) = bill.faults
    assert fault.steps_redone == 4  # 6, 7, 8, 9
    assert fault.wasted == pytest.approx(4.5) and fault.restore == 1.0
    assert fault.recovery == pytest.approx(2.5)
    assert bill.badput["checkpoint_save"] == 0.5 and bill.badput["checkpoint_restore"] == 1.0
    assert bill.productive == pytest.approx(5 + 3 - 0.5)
    _sums_to_elapsed(bill)


def test_a_freeze_is_stalled_until_detected():
    events = [Event(0, E.LAUNCHED), Event(5.2, E.FROZEN, rank=1), Event(20, E.NODE_LOST, node=0),
              Event(30, E.SUCCEEDED)]
    steps = _steps(0, 0, 5, 1.0) + _steps(1, 0, 5, 24.0)
    bill = goodput(events, steps, now=99)
    (fault,) = bill.faults
    assert fault.what == "freeze rank 1" and fault.stalled == pytest.approx(14.8)
    assert fault.recovery == pytest.approx(4) and bill.badput["stalled"] == pytest.approx(14.8)
    _sums_to_elapsed(bill)


def test_without_reports_the_steps_are_unknown():
    events = [Event(0, E.LAUNCHED), Event(3, E.KILLED, rank=1), Event(9, E.SUCCEEDED)]
    bill = goodput(events, [], now=99)
    assert bill.ratio is None and bill.productive is None and bill.badput is None
    assert bill.short() == ""
    assert "unknown" in str(bill) and "kill rank 1" in str(bill)


def test_plots_mark_events_at_the_step_reached():
    events = [Event(0, E.LAUNCHED), Event(4.5, E.KILLED, rank=1), Event(5, E.RESTARTING),
              Event(7, E.RESTORED, detail={"step": 2})]
    marks = event_steps(events, _steps(0, 0, 5, 1.0))
    assert [(s, name) for s, name, _ in marks] == [(3, "kill"), (4, "restart"), (2, "resume")]


def test_a_real_kill_is_billed_from_its_events_and_steps(tmp_path):
    """A real job checkpointing every 5 steps; rank 1 killed: the bill's waste is the steps
    since that checkpoint, its recovery the kill to the next attempt's first step."""
    job = enb.launch(scenarios.reporting_steps, 30, 0.05, str(tmp_path / "ckpt"), 5, nproc=2,
                     max_restarts=1)
    job.wait_until(lambda: len(job.metrics_book) > 0 and
                   max(r.step for r in job.metrics_book.records()) >= 12, what="step 12")
    job.kill(1)
    job.result(timeout=120)
    bill = job.goodput()
    frame = job.metrics
    first, second = sorted(frame["attempt"].unique())
    resumed_at = int(frame[frame["attempt"] == second]["step"].min())
    before = frame[frame["attempt"] == first]
    assert resumed_at % 5 == 0  # after a checkpoint
    (fault,) = bill.faults
    assert fault.what == "kill rank 1"
    assert fault.step == int(before["step"].max())
    assert fault.steps_redone == fault.step - resumed_at + 1 - (resumed_at == 0)
    kill = next(e for e in job.events if e.kind == "killed")
    next_first = frame[frame["attempt"] == second].groupby("step")["time"].max().min()
    cut = max(kill.time, before.groupby("step")["time"].max().max())
    assert fault.recovery == pytest.approx(next_first - cut)
    _sums_to_elapsed(bill)
    assert bill.ratio is not None and 0 < bill.ratio < 1
    assert "kill rank 1 at step" in str(bill)
