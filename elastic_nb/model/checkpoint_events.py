"""The rule for what the kernel found in the checkpoint directory: the list, and events.

``observed`` sets the job's complete checkpoints and records a
``checkpoint`` event for each new one and a ``restored`` event for each
resume, at the time the rank wrote it (the kernel reads the directory a
little later), in time order among the others.
"""

from __future__ import annotations

import bisect

from elastic_nb.model.checkpoints import Checkpoint
from elastic_nb.model.state import Event, EventKind, JobState
from elastic_nb.wire.checkpoints import Restored


def observed(state: JobState, present: list[Checkpoint], new: list[Checkpoint],
             restores: list[Restored]) -> list[Event]:
    state.checkpoints = list(present)
    events = [Event(c.time, EventKind.CHECKPOINT, detail=c.detail()) for c in new]
    events += [Event(r.time, EventKind.RESTORED, detail={
        "step": r.step, "next": r.next, "world_from": r.world_from, "world_to": r.world_to,
        "seconds": round(r.seconds, 3)}) for r in restores]
    for event in sorted(events, key=lambda e: e.time):
        bisect.insort_right(state.events, event, key=lambda e: e.time)
    return events
