"""Goodput: where a job's time went, and what each fault cost (a pure rule).

From the job's events and the steps its ranks reported (``enb.report``),
elapsed time (launch to end, or to now) splits into productive step time and
badput by category:

- ``startup``: launch to the first reported step;
- ``recovery``: a fault's detection to the first step of the next attempt
  (rendezvous, restart, the first step), less its checkpoint restore;
- ``wasted_progress``: work the fault threw away: the steps done since the
  point the next attempt resumed from (its first reported step; every step
  when there was no checkpoint), and the unfinished step the fault cut;
- ``checkpoint_save`` / ``checkpoint_restore``: the seconds ``checkpoint``
  and ``restored`` events report;
- ``stalled``: a frozen or hung job's time before the fault was detected;
- ``other``: the rest (after the last step: teardown, a failed end).

A step's time is the gap between its report and the previous one of its
attempt (the latest rank's report of each step). The parts add up to the
elapsed time. Without reported steps nothing is invented: the ratio and
the parts are None and ``str`` says the steps are unknown.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from elastic_nb.model.state import Event, EventKind

CATEGORIES = ("startup", "recovery", "wasted_progress", "checkpoint_save", "checkpoint_restore",
              "stalled", "other")
FAULT_KINDS = {EventKind.KILLED, EventKind.NODE_KILLED, EventKind.FROZEN, EventKind.WORKER_FAILED,
               EventKind.NODE_LOST, EventKind.STALLED, EventKind.RESTARTING}
# after a freeze or a stall, the job is stuck until one of these says the fault was seen
DETECTIONS = {EventKind.WORKER_FAILED, EventKind.NODE_LOST, EventKind.RESTARTING,
              EventKind.KILLED, EventKind.NODE_KILLED, EventKind.THAWED, EventKind.FAILED,
              EventKind.STOPPED}
STUCK = {EventKind.FROZEN, EventKind.STALLED}
ENDS = {EventKind.SUCCEEDED, EventKind.FAILED, EventKind.STOPPED}


class StepMark(NamedTuple):
    """One rank's report of one step, in one attempt."""

    time: float
    attempt: int
    step: int
    rank: int = 0


@dataclass(frozen=True)
class FaultCost:
    """One fault and what it cost: its own share of the badput."""

    what: str  # "kill rank 3"
    time: float
    step: int | None  # the last step reported before it
    recovery: float = 0.0
    stalled: float = 0.0
    restore: float = 0.0
    wasted: float = 0.0  # seconds of work thrown away
    steps_redone: int = 0

    @property
    def cost(self) -> float:
        return self.recovery + self.stalled + self.restore + self.wasted

    def __str__(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        parts = [f"{self.recovery:.1f} s recovery"]
        if self.stalled:
            parts.append(f"{self.stalled:.1f} s stalled")
        if self.restore:
            parts.append(f"{self.restore:.1f} s restore")
        if self.wasted or self.steps_redone:
            parts.append(f"{self.steps_redone} steps redone {self.wasted:.1f} s")
        return f"{self.what}{at}: {self.cost:.1f} s = {' + '.join(parts)}"


@dataclass(frozen=True)
class Goodput:
    """A job's time: productive step time over elapsed, badput by category, each fault's cost."""

    elapsed: float
    productive: float | None
    badput: dict[str, float] | None
    faults: list[FaultCost] = field(default_factory=list)
    steps: int = 0  # distinct steps reported

    @property
    def known(self) -> bool:
        return self.productive is not None

    @property
    def ratio(self) -> float | None:
        if self.productive is None or self.elapsed <= 0:
            return None
        return self.productive / self.elapsed

    def short(self) -> str:
        """``goodput 91%`` (the dashboard's header), or "" while unknown."""
        return "" if self.ratio is None else f"goodput {self.ratio:.0%}"

    def __str__(self) -> str:
        if self.productive is None or self.badput is None or self.ratio is None:
            text = (f"Goodput unknown: no steps reported in {self.elapsed:.1f} s (call "
                    f"enb.report(step, loss=...) in the training loop).")
            if self.faults:
                text += " Faults: " + "; ".join(f.what for f in self.faults) + "."
            return text
        lost = ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s"
                         for name, seconds in self.badput.items() if seconds >= 0.05)
        text = (f"Goodput {self.ratio:.0%}: {self.productive:.1f} s of {self.elapsed:.1f} s were "
                f"productive steps ({self.steps} steps reported)")
        text += f"; badput: {lost}." if lost else "."
        if self.faults:
            text += " " + "; ".join(str(f) for f in self.faults) + "."
        return text


def _label(event: Event) -> str:
    kind = event.kind
    if kind == EventKind.KILLED:
        return f"kill rank {event.rank}"
    if kind == EventKind.NODE_KILLED:
        return f"kill node {event.node}"
    if kind == EventKind.FROZEN:
        return f"freeze rank {event.rank}" if event.rank is not None else f"freeze node {event.node}"
    if kind == EventKind.WORKER_FAILED:
        return f"rank {event.rank} failed" if event.rank is not None else "a rank failed"
    if kind == EventKind.NODE_LOST:
        return f"node {event.node} lost"
    if kind == EventKind.STALLED:
        return "stall"
    return "restart"


def _attempts(marks: Iterable[StepMark]) -> list[list[tuple[float, int]]]:
    """Each attempt's steps as (time, step), the latest rank's report of each, in time order."""
    latest: dict[int, dict[int, float]] = {}
    for mark in marks:
        steps = latest.setdefault(mark.attempt, {})
        if mark.time > steps.get(mark.step, float("-inf")):
            steps[mark.step] = mark.time
    return [sorted((t, s) for s, t in latest[a].items()) for a in sorted(latest)]


def goodput(events: Sequence[Event], marks: Iterable[StepMark], now: float) -> Goodput:
    """The bill of a job's time from its events and reported steps (see the module)."""
    events = sorted(events, key=lambda e: e.time)
    start = events[0].time if events else now
    end = next((e.time for e in events if e.kind in ENDS), now)
    attempts = [a for a in _attempts(marks) if a]
    faults_seen = [e for e in events if e.kind in FAULT_KINDS]
    if not attempts:
        return Goodput(end - start, None, None,
                       [FaultCost(_label(e), e.time, None) for e in faults_seen])
    badput = dict.fromkeys(CATEGORIES, 0.0)
    productive = 0.0
    faults: list[FaultCost] = []
    badput["startup"] = attempts[0][0][0] - start
    for index, steps in enumerate(attempts):
        following = attempts[index + 1] if index + 1 < len(attempts) else None
        resumed_at = following[0][1] if following else None
        redone, wasted = 0, 0.0
        for (t0, _), (t1, step) in itertools.pairwise(steps):
            if resumed_at is not None and step >= resumed_at:
                redone, wasted = redone + 1, wasted + (t1 - t0)
            else:
                productive += t1 - t0
        last_time, last_step = steps[-1]
        gap_end = following[0][0] if following else end
        window = [e for e in events if steps[0][0] < e.time < gap_end]
        fault = next((e for e in window if e.kind in FAULT_KINDS), None)
        if fault is None:
            if following is not None:  # a new attempt without a fault the timeline names
                fault = Event(last_time, EventKind.RESTARTING)
            else:
                badput["other"] += gap_end - last_time
                continue
        cut = max(fault.time, last_time)
        wasted += cut - last_time
        stalled = 0.0
        if fault.kind in STUCK:
            seen = next((e.time for e in window if e.time > fault.time and e.kind in DETECTIONS),
                        gap_end)
            stalled = max(0.0, min(seen, gap_end) - cut)
        if following is None:  # the job ended after this fault: the rest is no recovery
            badput["wasted_progress"] += wasted
            badput["stalled"] += stalled
            badput["other"] += gap_end - cut - stalled
            faults.append(FaultCost(_label(fault), fault.time, last_step, 0.0, stalled, 0.0,
                                    wasted, redone))
            continue
        restore = sum(float(e.detail.get("seconds", 0.0)) for e in window
                      if e.kind == EventKind.RESTORED and e.time >= cut)
        recovery_all = gap_end - cut - stalled
        restore = min(restore, recovery_all)
        recovery = recovery_all - restore
        badput["wasted_progress"] += wasted
        badput["stalled"] += stalled
        badput["checkpoint_restore"] += restore
        badput["recovery"] += recovery
        faults.append(FaultCost(_label(fault), fault.time, last_step, recovery, stalled, restore,
                                wasted, redone))
    saved = sum(float(e.detail.get("seconds", 0.0)) for e in events
                if e.kind == EventKind.CHECKPOINT and e.time <= end)
    saved = min(saved, productive)
    badput["checkpoint_save"] = saved
    productive -= saved
    distinct = len({s for steps in attempts for _, s in steps})
    return Goodput(end - start, productive, badput, faults, distinct)


MARKED = {EventKind.KILLED: "kill", EventKind.NODE_KILLED: "kill node", EventKind.NODE_LOST: "lost node",
          EventKind.FROZEN: "freeze", EventKind.RESTARTING: "restart",
          EventKind.WORKER_FAILED: "failed", EventKind.CHECKPOINT: "checkpoint",
          EventKind.RESTORED: "resume"}


def event_steps(events: Iterable[Event], marks: Iterable[StepMark]) -> list[tuple[float, str, str]]:
    """Where a plot marks the events it shows: (the step reached then, a short name, the
    event in words), in time order; events before the first step are left out."""
    reached = sorted((m.time, m.step) for m in marks)
    shown: list[tuple[float, str, str]] = []
    position, step = 0, None
    for event in sorted(events, key=lambda e: e.time):
        name = MARKED.get(event.kind)
        if name is None:
            continue
        while position < len(reached) and reached[position][0] <= event.time:
            step = reached[position][1]
            position += 1
        if event.kind == EventKind.RESTORED and "step" in event.detail:
            step = int(event.detail["step"])
        if step is not None:
            shown.append((float(step), name, str(event)))
    return shown
